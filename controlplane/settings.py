"""The one settings class (``NURI_`` prefix) with safe local defaults."""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane import tokens
from controlplane.k8s.core import parse_raycluster_ref, parse_selector


class Settings(BaseSettings):
    """Everything configurable about a Nuri process.

    Defaults run one machine with nothing external: SQLite under ``NURI_HOME``, a local Ray,
    the API on 127.0.0.1:8000. ``NURI_DATABASE_URL`` selects PostgreSQL; ``NURI_RAY_ADDRESS``
    joins an existing Ray cluster.
    """

    # Inputs stay out of error messages: they hold the bootstrap token and database password.
    model_config = SettingsConfigDict(env_prefix="NURI_", extra="ignore", hide_input_in_errors=True)

    env: Literal["dev", "prod"] = "dev"
    home: Path = Path(".nuri")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ray_address: str | None = None
    # When set on first start, becomes the platform admin's API token (stored hashed).
    bootstrap_admin_token: str | None = None
    # Largest page a list endpoint returns.
    max_page_size: int = Field(default=500, ge=1)
    # Token last-use stamps are written at most this often per token (a write per request
    # would double the cost of every authenticated call).
    token_touch_interval_s: float = Field(default=60.0, ge=0)
    default_job_retries: int = Field(default=3, ge=0)
    # Ed25519 key (PEM) that signs audit checkpoints; created under NURI_HOME when absent.
    audit_key_path: Path | None = None
    audit_checkpoint_interval_s: float = Field(default=300.0, gt=0)
    # Preemption: how long a victim has to checkpoint and stop, and how long a job runs at
    # least before it may be preempted (the scheduler's engine; `nuri up` and the
    # standalone scheduler alike).
    preemption_grace_s: float = Field(default=120.0, gt=0)
    min_runtime_s: float = Field(default=600.0, ge=0)
    # Import the capacity planner (torch, transformers: seconds) at start, not on first use.
    warm_planner: bool = True
    # The job area: each job gets <jobs_dir>/<member id>/<job id>/ (inputs, checkpoints,
    # output, scratch) and writes nowhere else. Kept apart from the state (database, keys).
    jobs_dir: Path | None = None
    # Where members' file:// datasets may live: <data_dir>/<member name>/... (plus the demo
    # data shipped with Nuri, readable by everyone). Anything else is refused at registration.
    data_dir: Path | None = None
    # The scheduler's synthetic test payload ({"payload": "synthetic"}); off in prod.
    allow_synthetic_payload: bool | None = None
    # Reverse proxies (comma-separated IPs or CIDRs) whose X-Forwarded-For names the caller in
    # audit events; from anyone else the header is ignored and the socket's peer is the source.
    trusted_proxies: str = ""
    # The largest request body the API and the portal accept (413 beyond it); read only after
    # the caller is authenticated.
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    # Per API token: ``rate_limit_burst`` requests at once, refilled at ``rate_limit_per_s``
    # per second (429 with Retry-After beyond it); 0 switches the limit off. Counted in each API
    # process: with ``nuri api --workers N`` a token may reach N times the rate. No token is
    # exempt, the platform admin's included.
    rate_limit_per_s: float = Field(default=50.0, ge=0, allow_inf_nan=False)
    rate_limit_burst: int = Field(default=200, ge=1)
    # /metrics needs a token with the ``metrics`` scope unless the server listens on a
    # loopback or private address, or this says the metrics are public
    # (``controlplane.observability.metrics``).
    metrics_public: bool = False
    # A listener for the metrics alone (the chart's metrics port), on ``metrics_host`` (default
    # ``host``): by ``nuri up`` / ``nuri api`` and by the standalone scheduler. It has no token
    # check, so it listens only where ``/metrics`` would need none.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str | None = None
    # ``json``: one JSON object per log line, with the trace and span ids and the job and
    # member it was about (``controlplane.observability.logs``). Tracing itself is set by
    # the standard OTEL_* variables, not here.
    log_format: Literal["text", "json"] = "text"
    # Kubernetes inventory (``controlplane.k8s``): off, or read Nodes with the pod's service
    # account (``incluster``) or a kubeconfig (``NURI_K8S_KUBECONFIG``, else ~/.kube/config).
    # The pool label names a registered pool; the selector (equality terms, "a=b,c") narrows
    # the nodes read; taints listed as tolerated do not count as cordons.
    k8s_inventory: Literal["off", "incluster", "kubeconfig"] = "off"
    k8s_kubeconfig: Path | None = None
    k8s_context: str | None = None
    k8s_pool_label: str = "nuri.io/pool"
    k8s_node_selector: str = ""
    k8s_tolerated_taints: str = "nvidia.com/gpu"
    # The KubeRay RayCluster that runs the work, ``<namespace>/<name>`` (read with the same
    # connection; empty: not read). While its head is not ready, placement pauses.
    k8s_raycluster: str = ""
    k8s_raycluster_poll_s: float = Field(default=5.0, gt=0, le=300)
    # Serving gateway (``controlplane.serving``): requests and tokens per minute an endpoint
    # takes in each API process unless its config sets ``rpm`` / ``tpm`` (None: no limit);
    # how often a request waiting for a cold start polls for a ready replica; how often a
    # request stamps its endpoint's ``last_request_at`` (the controller's idle clock).
    serve_rpm: int | None = Field(default=None, ge=1)
    serve_tpm: int | None = Field(default=None, ge=1)
    serve_cold_start_poll_s: float = Field(default=0.1, gt=0, le=5)
    serve_touch_interval_s: float = Field(default=1.0, ge=0, le=3600)

    @field_validator("k8s_raycluster")
    @classmethod
    def _raycluster_ref(cls, value: str) -> str:
        if value:
            parse_raycluster_ref(value)
        return value

    @field_validator("k8s_node_selector")
    @classmethod
    def _selector_parses(cls, value: str) -> str:
        """Refuse at start a selector the inventory could not apply on the client side."""
        parse_selector(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: str) -> str:
        proxy_networks(value)
        return value

    @field_validator("bootstrap_admin_token")
    @classmethod
    def _bootstrap_token_can_sign_in(cls, value: str | None) -> str | None:
        """Refuse a token that would be stored and then answer 401 forever."""
        problem = None if value is None else tokens.bootstrap_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _areas_apart(self) -> Settings:
        """Jobs and members' data never hold the state: the database, the signing key."""
        state = [self.resolved_audit_key_path.resolve()]
        if self.database_url is None:
            state.append((self.home / "nuri.db").resolve())
        jobs, data = self.resolved_jobs_dir, self.resolved_data_dir
        for name, area in (("NURI_JOBS_DIR", jobs), ("NURI_DATA_DIR", data)):
            if any(p.is_relative_to(area) for p in state):
                raise ValueError(f"{name} ({area}) must not hold the database or the audit key")
        if jobs.is_relative_to(data) or data.is_relative_to(jobs):
            raise ValueError("NURI_JOBS_DIR and NURI_DATA_DIR must not contain one another")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_prod(self) -> Settings:
        if self.env == "prod":
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError("NURI_ENV=prod requires NURI_DATABASE_URL to be PostgreSQL")
            token = self.bootstrap_admin_token
            if token is not None and len(token) < 32:
                raise ValueError(
                    "NURI_BOOTSTRAP_ADMIN_TOKEN must be at least 32 characters in prod"
                )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'nuri.db').resolve()}"

    @property
    def resolved_jobs_dir(self) -> Path:
        return (self.jobs_dir or self.home / "jobs").resolve()

    @property
    def resolved_data_dir(self) -> Path:
        return (self.data_dir or self.home / "data").resolve()

    @property
    def synthetic_allowed(self) -> bool:
        if self.allow_synthetic_payload is None:
            return self.env == "dev"
        return self.allow_synthetic_payload

    @property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return proxy_networks(self.trusted_proxies)

    @property
    def resolved_audit_key_path(self) -> Path:
        return self.audit_key_path or self.home / "audit-signing-key.pem"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def proxy_networks(spec: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """``NURI_TRUSTED_PROXIES`` parsed: "10.0.0.7, 10.1.0.0/16, fd00::/8" (an address is its
    own /32 or /128). Raises ValueError naming an entry that is neither."""
    networks = []
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"NURI_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)
