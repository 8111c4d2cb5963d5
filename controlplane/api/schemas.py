"""Request and response bodies of REST API v1.

Create/Update models forbid unknown fields, so a client cannot smuggle in ``id``,
``member_id``, ``status`` or any other server-owned column: it gets a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from controlplane.db.models import Classification, JobKind, NodeStatus, Role

Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)
]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{2,40}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]

T = TypeVar("T")


# The largest integer the databases store (64-bit signed): every integer a request may carry
# into a query or a row is bounded by it, so none reaches the driver out of range.
DB_INT_MAX = 2**63 - 1


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(Output, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class ErrorBody(Output):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


# --- members, users, tokens ----------------------------------------------------------------


class MemberCreate(Input):
    name: Slug
    display_name: ShortText
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,40}$")] = "other"
    country: Country = "KR"


class MemberUpdate(Input):
    display_name: ShortText | None = None
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,40}$")] | None = None
    active: bool | None = None


class MemberPublic(Output):
    id: str
    name: str
    display_name: str
    kind: str
    country: str
    active: bool
    created_at: datetime


class UserCreate(Input):
    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
    name: ShortText
    role: Role = Role.MEMBER_USER
    # Platform admins say which member; member admins may only create in their own member.
    member: str | None = None


class UserUpdate(Input):
    name: ShortText | None = None
    role: Role | None = None
    disabled: bool | None = None


class UserPublic(Output):
    id: str
    member_id: str | None
    email: str
    name: str
    role: Role
    disabled: bool
    created_at: datetime


class TokenCreate(Input):
    name: ShortText
    # A user id or email. Defaults to the caller; admins may issue tokens for their users.
    user_id: str | None = None
    scopes: list[str] | None = None
    expires_in_days: int | None = Field(default=90, ge=1, le=730)


class TokenPublic(Output):
    id: str
    user_id: str
    member_id: str | None
    name: str
    display_prefix: str
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret. Shown once; only its hash is stored.")


# --- inventory -----------------------------------------------------------------------------


# What members without a quota row in a pool may do there: hold nothing (0), borrow up to N
# GPUs, or "unlimited" -- always a choice, never a blank (null is refused).
UNLIMITED: Literal["unlimited"] = "unlimited"
DefaultBorrowing = Annotated[
    Annotated[int, Field(ge=0, le=1_000_000)] | Literal["unlimited"],
    Field(
        description=(
            "GPUs a member without a quota row in this pool may borrow there: 0 = none, "
            'N = up to N of the idle GPUs, "unlimited" = no limit of its own'
        )
    ),
]


def borrowing_limit_of(value: int | str) -> int | None:
    """The stored form of a :data:`DefaultBorrowing` (None = unlimited)."""
    return None if value == UNLIMITED else int(value)


class PoolCreate(Input):
    name: Slug
    gpu_model: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    gpu_memory_gib: int = Field(ge=1, le=4096)
    gpus_per_node: int = Field(ge=1, le=64)
    site: ShortText
    region: Region
    jurisdiction: Country
    max_classification: Classification = Classification.OPEN
    interconnect_domains: list[Slug] = Field(default_factory=list, max_length=1000)
    certification: str | None = Field(default=None, max_length=100)
    node_count: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="Register this many nodes now, spread evenly over the domains.",
    )
    # Left out: unlimited, what every pool allowed before the setting existed.
    default_borrowing_limit: DefaultBorrowing = UNLIMITED


class PoolUpdate(Input):
    site: ShortText | None = None
    region: Region | None = None
    jurisdiction: Country | None = None
    max_classification: Classification | None = None
    certification: str | None = Field(default=None, max_length=100)
    default_borrowing_limit: DefaultBorrowing | None = None


class PoolPublic(Output):
    id: str
    name: str
    gpu_model: str
    gpu_memory_gib: int
    gpus_per_node: int
    site: str
    region: str
    jurisdiction: str
    max_classification: str
    interconnect_domains: list[str]
    certification: str | None
    default_borrowing_limit: int | Literal["unlimited"]
    created_at: datetime
    node_count: int = 0
    total_gpus: int = 0

    @model_validator(mode="before")
    @classmethod
    def _unlimited(cls, data: Any) -> Any:
        # The row stores unlimited as NULL; clients read the explicit word.
        if not isinstance(data, dict):
            data = {k: getattr(data, k) for k in cls.model_fields if hasattr(data, k)}
        if data.get("default_borrowing_limit") is None:
            data = {**data, "default_borrowing_limit": UNLIMITED}
        return data


class NodeCreate(Input):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,99}$")]
    pool: str
    domain: Slug | None = None
    gpus: int | None = Field(default=None, ge=1, le=64)


class NodeUpdate(Input):
    status: NodeStatus | None = None
    domain: Slug | None = None


class NodePublic(Output):
    id: str
    name: str
    pool_id: str
    domain: str
    gpus: int
    status: str
    ray_node_id: str | None
    created_at: datetime
    # Kubernetes inventory (controlplane.k8s): "k8s" when it owns the node, why it is
    # quarantined, and the pool label / region / zone the cluster last reported.
    source: str | None = None
    quarantine_reason: str | None = None
    observed: dict[str, str | None] | None = None


class PriorityClassPublic(Output):
    name: str
    value: int
    preemptible: bool
    description: str


class QuotaCreate(Input):
    member: str
    pool: str
    nominal_gpus: int = Field(ge=0, le=1_000_000)
    borrowing_limit: int | None = Field(default=None, ge=0, le=1_000_000)
    lending_limit: int | None = Field(default=None, ge=0, le=1_000_000)


class QuotaUpdate(Input):
    nominal_gpus: int | None = Field(default=None, ge=0, le=1_000_000)
    borrowing_limit: int | None = Field(default=None, ge=0, le=1_000_000)
    lending_limit: int | None = Field(default=None, ge=0, le=1_000_000)


class QuotaPublic(Output):
    id: str
    member_id: str
    pool_id: str
    nominal_gpus: int
    borrowing_limit: int | None
    lending_limit: int | None
    updated_at: datetime


# A quarter, half-year or month in ASCII digits (``\d`` takes Arabic-Indic and fullwidth digits
# too). It must lie in years 0001 to 9999, the dates a datetime holds: the service refuses
# 0000-01 or 9999-Q4 (which ends on 10000-01-01) with ``period_out_of_range``.
Period = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{4}-(Q[1-4]|H[12]|[0-9]{2})$"),
    Field(description="2026-Q4, 2026-H1 or 2026-11; from 0001-01 to 9999-11, 9999-Q3, 9999-H1"),
]

# More GPU-hours than 100,000 GPUs burn in a year, the longest period: every budget a cluster
# can spend fits, and the forecast's arithmetic stays in range.
MAX_GPU_HOURS = 1e9
GpuHours = Annotated[
    float,
    Field(
        ge=0,
        le=MAX_GPU_HOURS,
        allow_inf_nan=False,
        description="GPU-hours for the period, at most 1e9 (finite)",
    ),
]


# Prompt + completion tokens the member's endpoints may serve in the period (the serving
# gateway's ledger); a quadrillion is far past any cluster's year and fits a 64-bit sum.
MAX_BUDGET_TOKENS = 10**15
BudgetTokens = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_BUDGET_TOKENS,
        description="token cap for the period (prompt + completion), at most 1e15; null: none",
    ),
]


class BudgetCreate(Input):
    member: str
    period: Period
    gpu_hours: GpuHours
    tokens: BudgetTokens | None = None


class BudgetUpdate(Input):
    """What to change: fields left out stay as they are (``tokens: null`` removes the cap)."""

    gpu_hours: GpuHours | None = None
    tokens: BudgetTokens | None = None


class BudgetForecast(Output):
    """When the budget runs out at the member's current burn (GPUs running now)."""

    remaining_gpu_hours: float
    gpus_in_use: int
    current_burn_gpu_hours_per_hour: float
    average_burn_gpu_hours_per_hour: float
    exhausted_at: datetime | None = Field(
        description="null when nothing runs, or when it lies past year 9999 (it lasts the period)"
    )
    lasts_the_period: bool


class BudgetPublic(Output):
    id: str
    member_id: str
    period: str
    starts_at: datetime
    ends_at: datetime
    gpu_hours: float
    used_gpu_hours: float = 0.0
    forecast: BudgetForecast | None = None
    tokens: int | None = None
    used_tokens: int = Field(
        default=0, description="settled tokens plus open reservations of the period"
    )
    updated_at: datetime


# --- data ----------------------------------------------------------------------------------


class Labels(Input):
    """Residency labels. ``allowed_regions`` empty means 'no region may process it'."""

    jurisdiction: Country
    allowed_regions: list[Region] = Field(min_length=1, max_length=100)
    classification: Classification = Classification.OPEN
    personal_info: bool = False
    transfer_basis: str | None = Field(default=None, max_length=200)


class DatasetCreate(Input):
    name: Slug
    kind: Annotated[str, StringConstraints(pattern=r"^(data|model)$")] = "data"
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    description: str = Field(default="", max_length=2000)
    labels: Labels


class DatasetUpdate(Input):
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None
    description: str | None = Field(default=None, max_length=2000)
    labels: Labels | None = None


class DatasetPublic(Output):
    id: str
    member_id: str
    name: str
    kind: str
    uri: str
    description: str
    labels: dict[str, Any]
    provenance: dict[str, Any]
    version: int
    sha256: str | None = None
    size_bytes: int | None = None
    created_at: datetime
    updated_at: datetime


# --- jobs ----------------------------------------------------------------------------------

MAX_RUNTIME_S = 30 * 24 * 3600


class JobCreate(Input):
    kind: JobKind
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    name: ShortText | None = None
    inputs: list[str] = Field(default_factory=list, max_length=100)
    gpus: int = Field(ge=1, le=100_000)
    nodes: int | None = Field(default=None, ge=1, le=10_000)
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    allowed_pools: list[str] = Field(default_factory=list, max_length=100)
    preferred_pools: list[str] = Field(default_factory=list, max_length=100)
    same_domain: bool = True
    priority_class: str = "research"
    max_runtime_s: int = Field(default=24 * 3600, ge=60, le=MAX_RUNTIME_S)
    preemptible: bool | None = None
    teacher: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="distill only: the frozen teacher (default axk1)"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="tuning knobs of the job's kind (schemas: FinetuneConfig, LoraConfig, "
        "DistillConfig, InferenceConfig); never paths",
    )

    @model_validator(mode="after")
    def _shape(self) -> JobCreate:
        if self.nodes is not None and self.gpus_per_node is not None:
            if self.nodes * self.gpus_per_node != self.gpus:
                raise ValueError(
                    f"gpus ({self.gpus}) must equal nodes ({self.nodes}) x gpus_per_node "
                    f"({self.gpus_per_node})"
                )
        elif self.nodes is not None and self.gpus % self.nodes != 0:
            raise ValueError(f"gpus ({self.gpus}) must divide evenly over nodes ({self.nodes})")
        elif self.gpus_per_node is not None and self.gpus % self.gpus_per_node != 0:
            raise ValueError(
                f"gpus ({self.gpus}) must be a multiple of gpus_per_node ({self.gpus_per_node})"
            )
        if not set(self.preferred_pools) <= set(self.allowed_pools) and self.allowed_pools:
            raise ValueError("preferred_pools must be a subset of allowed_pools")
        return self


class JobPublic(Output):
    id: str
    member_id: str
    submitter_id: str
    name: str
    kind: str
    model: str
    inputs: list[str]
    gpus: int
    nodes: int
    gpus_per_node: int
    allowed_pools: list[str]
    preferred_pools: list[str]
    same_domain: bool
    priority_class: str
    max_runtime_s: int
    preemptible: bool
    config: dict[str, Any]
    teacher: str | None = None
    idempotency_key: str | None
    status: str
    attempt: int
    max_retries: int
    reasons: list[dict[str, Any]]
    queue_position: int | None = None
    eta: datetime | None = None
    pool: str | None
    assignment: list[list[Any]] = Field(default_factory=list)
    checkpoint_uri: str | None
    execution_plan: dict[str, Any] | None = Field(
        default=None,
        description="what the workers run, resolved at admission (the job's directories "
        "relative to its own directory)",
    )
    last_checkpoint_at: datetime | None = None
    times_preempted: int = 0
    preempt_deadline: datetime | None = None
    created_at: datetime
    updated_at: datetime
    admitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="after")
    def _no_server_paths(self) -> JobPublic:
        """The job's directories and checkpoints as paths inside the job's own directory:
        where the jobs area lies on the servers is nobody's business outside them."""
        plan = self.execution_plan
        if not plan or "dirs" not in plan:
            return self
        root = str(plan["dirs"].get("root", ""))
        dirs = {k: _inside(root, str(v)) for k, v in plan["dirs"].items()}
        models = {}
        for key in ("model", "teacher"):
            m = plan.get(key)
            if m:
                models[key] = {
                    **m,
                    **{
                        part: {**m[part], "uri": _public_uri(m[part]["uri"])}
                        for part in ("weights", "adapter")
                        if m.get(part)
                    },
                }
        self.execution_plan = {**plan, **models, "dirs": dirs}
        if self.checkpoint_uri:
            self.checkpoint_uri = _inside(root, self.checkpoint_uri)
        return self


def _inside(root: str, path: str) -> str:
    """``path`` relative to the job's directory (``.`` for the directory itself)."""
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return path[len(root) :].lstrip("/") or "."
    return path


def _public_uri(uri: str) -> str:
    """An artifact used as a model lies in Nuri's jobs area: named, never located."""
    return "nuri" if uri.startswith("file://") else uri


class JobCancel(Input):
    reason: str = Field(default="", max_length=500)


class JobEventPublic(Output):
    id: int
    job_id: str
    at: datetime
    type: str
    from_status: str | None
    to_status: str | None
    attempt: int
    actor: str | None
    message: str
    details: dict[str, Any]


class JobLogPublic(Output):
    id: int = Field(description="increases with each line: pass it as `after_id` to follow")
    attempt: int
    at: datetime
    line: str


class JobMetricPublic(Output):
    attempt: int
    at: datetime
    step: int
    values: dict[str, Any]


# --- artifacts and policies ----------------------------------------------------------------


class ArtifactPublic(Output):
    id: str
    member_id: str
    job_id: str | None
    name: str
    kind: str
    # "nuri" when Nuri stores it (fetch it with GET .../download), the s3:// URI when it is in
    # the member's own store; never a server path.
    location: str
    sha256: str | None
    labels: dict[str, Any]
    provenance: dict[str, Any]
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _without_server_paths(cls, data: Any) -> Any:
        from controlplane.services.artifacts import public_location, public_provenance

        if isinstance(data, dict):
            row = dict(data)
        else:
            names = [n for n in cls.model_fields if n != "location"]
            row = {n: getattr(data, n) for n in [*names, "uri"] if hasattr(data, n)}
        uri = row.pop("uri", None)
        if isinstance(uri, str):
            row["location"] = public_location(uri)
        if isinstance(row.get("provenance"), dict):
            row["provenance"] = public_provenance(row["provenance"])
        return row


class ArtifactDownload(Output):
    """A link to an artifact's content: ``href`` needs no token and expires at ``expires_at``."""

    artifact_id: str
    name: str
    kind: str
    sha256: str | None
    size_bytes: int | None
    href: str
    expires_at: datetime


class ExportRequest(Input):
    region: Region
    jurisdiction: Country
    max_classification: Classification = Classification.SENSITIVE


class WhereRequest(Input):
    """ "Where may this job run, and why?" without submitting it."""

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    inputs: list[str] = Field(default_factory=list, max_length=100)
    pools: list[str] | None = None


class PolicyVersionCreate(Input):
    policies: Annotated[str, StringConstraints(min_length=1, max_length=500_000)]
    # Omitted: the shipped schema (policies must still validate against it).
    cedar_schema: Annotated[str, StringConstraints(min_length=2, max_length=500_000)] | None = None
    note: str = Field(default="", max_length=500)
    activate: bool = False


class PolicyVersionPublic(Output):
    id: int
    version: str
    policy_set_hash: str
    note: str
    active: bool
    created_by: str
    created_at: datetime
