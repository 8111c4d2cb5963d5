"""SQLModel tables. Every tenant-owned row carries ``member_id``; queries scope on it.

Model families follow the SQLModel habit: a ``*Base`` holds what a client may send, the
``table=True`` class adds what only the server sets (ids, owner, status, timestamps), and the
API's ``*Create`` / ``*Public`` models live in ``controlplane.api.schemas``.

Enumerations are stored as strings (checked in Python) so that adding a value never needs a
database enum migration on PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controlplane.db.types import UTCDateTime, new_id, utcnow


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    MEMBER_ADMIN = "member_admin"
    MEMBER_USER = "member_user"
    AUDITOR = "auditor"


class Classification(StrEnum):
    """Ordered from least to most restricted; a pool processes up to its maximum."""

    OPEN = "open"
    SENSITIVE = "sensitive"
    CLASSIFIED = "classified"

    @property
    def rank(self) -> int:
        return list(Classification).index(self)


class JobKind(StrEnum):
    FINETUNE = "finetune"
    LORA = "lora"
    DISTILL = "distill"
    INFERENCE = "inference"
    PRETRAIN = "pretrain"


class NodeStatus(StrEnum):
    """``quarantined``: the node's observed location contradicts its pool (Kubernetes
    inventory, ``controlplane.k8s``); like ``cordoned``, running work stays and nothing new
    lands, but only an admin moves it out (to ``ready``), never the reconciler."""

    READY = "ready"
    CORDONED = "cordoned"
    DOWN = "down"
    QUARANTINED = "quarantined"


# --- tenancy -------------------------------------------------------------------------------


class Member(SQLModel, table=True):
    """A consortium organisation. Owns users, tokens, datasets, jobs, quotas and budgets."""

    id: str = Field(default_factory=lambda: new_id("mem"), primary_key=True, max_length=40)
    name: str = Field(unique=True, index=True, max_length=63)
    display_name: str = Field(max_length=200)
    kind: str = Field(default="other", max_length=40)
    country: str = Field(default="KR", max_length=2)
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class User(SQLModel, table=True):
    """A person or pipeline identity. Platform admins and auditors may have no member."""

    id: str = Field(default_factory=lambda: new_id("usr"), primary_key=True, max_length=40)
    member_id: str | None = Field(default=None, foreign_key="member.id", index=True, max_length=40)
    email: str = Field(unique=True, index=True, max_length=254)
    name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ApiToken(SQLModel, table=True):
    """A bearer token. Only its SHA-256 is stored; the secret is shown once at creation."""

    id: str = Field(default_factory=lambda: new_id("tok"), primary_key=True, max_length=40)
    user_id: str = Field(foreign_key="user.id", index=True, max_length=40)
    member_id: str | None = Field(default=None, foreign_key="member.id", index=True, max_length=40)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    # First characters of the secret, enough to recognise a token in a list or a leak report.
    display_prefix: str = Field(max_length=16)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PortalSession(SQLModel, table=True):
    """A browser signed in to the portal with an API token.

    The cookie holds a random secret; only its SHA-256 is stored, as for tokens. The session
    acts as its token (same user, role, member and scopes) and ends at sign-out, at its
    expiry (never later than the token's), or when the token is revoked or its user disabled.
    """

    id: str = Field(default_factory=lambda: new_id("ps"), primary_key=True, max_length=40)
    secret_hash: str = Field(unique=True, index=True, max_length=64)
    token_id: str = Field(foreign_key="apitoken.id", index=True, max_length=40)
    user_id: str = Field(foreign_key="user.id", max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- cluster inventory ---------------------------------------------------------------------


class Pool(SQLModel, table=True):
    """A resource flavor at a site. Region and classification are admin-asserted facts."""

    id: str = Field(default_factory=lambda: new_id("pool"), primary_key=True, max_length=40)
    name: str = Field(unique=True, index=True, max_length=63)
    gpu_model: str = Field(max_length=40)
    gpu_memory_gib: int
    gpus_per_node: int
    site: str = Field(max_length=100)
    region: str = Field(max_length=40)
    jurisdiction: str = Field(max_length=2)
    max_classification: str = Field(default=Classification.OPEN.value, max_length=20)
    interconnect_domains: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    certification: str | None = Field(default=None, max_length=100)
    # What a member with no quota row in this pool may hold here: 0 nothing, N borrow up to N
    # GPUs of what others leave idle. NULL is unlimited borrowing, set only on purpose (the
    # API's "unlimited"); pools that predate the column keep it, which was their behaviour.
    default_borrowing_limit: int | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Node(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("node"), primary_key=True, max_length=40)
    name: str = Field(unique=True, index=True, max_length=100)
    pool_id: str = Field(foreign_key="pool.id", index=True, max_length=40)
    domain: str = Field(max_length=63)
    gpus: int
    status: str = Field(default=NodeStatus.READY.value, max_length=20)
    ray_node_id: str | None = Field(default=None, max_length=64)
    # "k8s" when the Kubernetes inventory owns the row (and may remove it); None: by hand.
    source: str | None = Field(default=None, max_length=20)
    # Why the node is quarantined (the contradictions seen), shown to admins.
    quarantine_reason: str | None = Field(default=None, max_length=1000)
    # The pool label, region and zone the cluster last reported ({"pool", "region", "zone"});
    # placement re-checks them against the pool every cycle. None: never observed.
    observed: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PriorityClass(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=63)
    value: int
    preemptible: bool
    description: str = Field(default="", max_length=500)


class Quota(SQLModel, table=True):
    """Member x pool: guaranteed GPUs, how many more it may borrow, how many it may lend."""

    __table_args__ = (UniqueConstraint("member_id", "pool_id", name="uq_quota_member_pool"),)

    id: str = Field(default_factory=lambda: new_id("quota"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    pool_id: str = Field(foreign_key="pool.id", index=True, max_length=40)
    nominal_gpus: int
    # None means "no limit" (the cohort's free capacity bounds it).
    borrowing_limit: int | None = None
    lending_limit: int | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Budget(SQLModel, table=True):
    """GPU-hours a member may consume in one period (e.g. ``2026-Q4``)."""

    __table_args__ = (UniqueConstraint("member_id", "period", name="uq_budget_member_period"),)

    id: str = Field(default_factory=lambda: new_id("bud"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    period: str = Field(max_length=20)
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime)
    gpu_hours: float
    # Prompt + completion tokens the member's endpoints may serve in the period; None: no cap.
    tokens: int | None = Field(default=None, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- data ----------------------------------------------------------------------------------


class Dataset(SQLModel, table=True):
    """A registered input (data or a model) with residency labels."""

    __table_args__ = (UniqueConstraint("member_id", "name", name="uq_dataset_member_name"),)

    id: str = Field(default_factory=lambda: new_id("ds"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    name: str = Field(max_length=100)
    kind: str = Field(default="data", max_length=20)  # data | model
    uri: str = Field(max_length=1000)
    description: str = Field(default="", max_length=2000)
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    provenance: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = 1
    # What the data is, byte for byte: the SHA-256 of the file (or of the canonical listing of
    # a directory / prefix, see workers.staging) and its size. Computed when a file:// dataset
    # is registered; for s3:// by the first job that reads it. Staging verifies both.
    sha256: str | None = Field(default=None, max_length=64)
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Artifact(SQLModel, table=True):
    """Something a job wrote (checkpoint, adapter, model, outputs); labels fixed at write."""

    id: str = Field(default_factory=lambda: new_id("art"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    job_id: str | None = Field(default=None, foreign_key="job.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=20)
    uri: str = Field(max_length=1000)
    sha256: str | None = Field(default=None, max_length=64)
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    provenance: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- jobs ----------------------------------------------------------------------------------


class Job(SQLModel, table=True):
    """A unit of GPU work. ``status`` is written only by ``controlplane.jobstate``."""

    __table_args__ = (
        UniqueConstraint("member_id", "idempotency_key", name="uq_job_member_idempotency"),
        Index("ix_job_member_status", "member_id", "status"),
    )

    id: str = Field(default_factory=lambda: new_id("job"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    submitter_id: str = Field(foreign_key="user.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=20)
    model: str = Field(max_length=200)
    inputs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    gpus: int
    nodes: int
    gpus_per_node: int
    allowed_pools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    preferred_pools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    same_domain: bool = True
    priority_class: str = Field(foreign_key="priorityclass.name", max_length=63)
    max_runtime_s: int
    preemptible: bool
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # distill only: the frozen teacher (a base model, a registered model or an artifact).
    teacher: str | None = Field(default=None, max_length=200)
    # What the workers run, resolved by the control plane at admission (workers.execution).
    execution_plan: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)
    status: str = Field(index=True, max_length=20)
    attempt: int = 1
    max_retries: int = 3
    reasons: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    pool: str | None = Field(default=None, max_length=63)
    # ((node name, GPUs), ...) chosen by the engine for the current attempt.
    assignment: list[list[Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    checkpoint_uri: str | None = Field(default=None, max_length=1000)
    last_checkpoint_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    times_preempted: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    preempt_deadline: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Events of the current attempt already stored (so a re-read after a crash adds none).
    observed_events: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Attempts lost with the control plane or Ray itself: not counted against max_retries.
    free_requeues: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # The Ray session the current attempt was launched in (a new one means Ray restarted).
    ray_session: str | None = Field(default=None, max_length=100)
    # When the current attempt's supervisor last answered (an unseen death is billed to it).
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    queue_position: int | None = None
    eta: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    admitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # W3C traceparent of the job's trace (the submission's; see observability.tracing).
    traceparent: str | None = Field(default=None, max_length=55)
    # kind "serve": the endpoint this job is a replica of (``controlplane.serving``).
    endpoint_id: str | None = Field(
        default=None, foreign_key="endpoint.id", index=True, max_length=40
    )


class JobEvent(SQLModel, table=True):
    """What happened to a job, in order: every transition and notable observation."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=40)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    type: str = Field(max_length=40)
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str | None = Field(default=None, max_length=20)
    attempt: int = 1
    actor: str | None = Field(default=None, max_length=40)
    message: str = Field(default="", max_length=2000)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class UsageRecord(SQLModel, table=True):
    """GPU-seconds one attempt of a job consumed in one pool and period."""

    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "period", name="uq_usage_job_attempt_period"),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    pool_id: str = Field(foreign_key="pool.id", index=True, max_length=40)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=40)
    attempt: int
    period: str = Field(max_length=20)
    # Indexed: each scheduling cycle reads only open records, those of current budget
    # periods and those recent enough to weigh in the decayed fair-share history.
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    gpus: int
    gpu_seconds: float = 0.0


# --- serving -------------------------------------------------------------------------------


class EndpointState(StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"


class Endpoint(SQLModel, table=True):
    """An online model: replicas (jobs of kind ``serve``) behind the OpenAI-compatible gateway.

    ``name`` is what clients pass as ``model``. ``desired_replicas`` is the controller's
    target between ``min_replicas`` and ``max_replicas`` (``controlplane.serving``).
    """

    __table_args__ = (UniqueConstraint("member_id", "name", name="uq_endpoint_member_name"),)

    id: str = Field(default_factory=lambda: new_id("ep"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", index=True, max_length=40)
    creator_id: str = Field(foreign_key="user.id", max_length=40)
    name: str = Field(max_length=63)
    model: str = Field(max_length=200)
    # LoRA adapters served on the same replicas (Ray Serve multiplexing): name -> artifact id.
    adapters: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    min_replicas: int
    max_replicas: int
    gpus_per_replica: int
    allowed_pools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    priority_class: str = Field(foreign_key="priorityclass.name", max_length=63)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=EndpointState.ACTIVE.value, max_length=20)
    desired_replicas: int = 0
    last_request_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    version: int = 1
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TokenUsage(SQLModel, table=True):
    """One gateway request: reserved before dispatch (worst case), settled after.

    ``reserved_tokens`` is what the request may at most use (prompt + ``max_tokens``) while
    ``settled_at`` is None; once settled, ``prompt_tokens`` + ``completion_tokens`` are what
    it used and ``reserved_tokens`` is 0. Budgets count both (``controlplane.serving``).
    """

    __table_args__ = (
        Index("ix_tokenusage_member_period", "member_id", "period"),
        Index("ix_tokenusage_open", "endpoint_id", "settled_at"),
    )

    id: str = Field(default_factory=lambda: new_id("req"), primary_key=True, max_length=40)
    member_id: str = Field(foreign_key="member.id", max_length=40)
    endpoint_id: str = Field(foreign_key="endpoint.id", max_length=40)
    token_id: str | None = Field(default=None, max_length=40)
    job_id: str | None = Field(default=None, max_length=40)  # the replica that answered
    adapter: str | None = Field(default=None, max_length=63)
    period: str = Field(max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    settled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reserved_tokens: int = Field(default=0, sa_type=BigInteger)
    prompt_tokens: int = Field(default=0, sa_type=BigInteger)
    completion_tokens: int = Field(default=0, sa_type=BigInteger)
    outcome: str | None = Field(default=None, max_length=40)  # stop | length | disconnected | ...


# --- audit ---------------------------------------------------------------------------------


class AuditHead(SQLModel, table=True):
    """The last sequence number and hash of each audit stream.

    Appenders bump ``seq`` with an UPDATE first, which takes the row lock (PostgreSQL) or the
    write lock (SQLite) before anything is read, so concurrent appenders to one stream queue
    up instead of forking the chain.
    """

    stream: str = Field(primary_key=True, max_length=40)
    seq: int
    hash: str = Field(max_length=64)


class AuditEvent(SQLModel, table=True):
    """One hash-chained audit record. Append-only: database triggers refuse UPDATE/DELETE."""

    __table_args__ = (UniqueConstraint("stream", "seq", name="uq_audit_stream_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    stream: str = Field(index=True, max_length=40)
    seq: int
    at: datetime = Field(sa_type=UTCDateTime)
    actor: str = Field(max_length=40)
    actor_role: str | None = Field(default=None, max_length=20)
    source_ip: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=64)
    trace_id: str | None = Field(default=None, max_length=32)
    action: str = Field(index=True, max_length=60)
    resource_type: str = Field(max_length=40)
    resource_id: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=20)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditCheckpoint(SQLModel, table=True):
    """An Ed25519 signature over a stream's head at a moment. Append-only too."""

    id: int | None = Field(default=None, primary_key=True)
    stream: str = Field(index=True, max_length=40)
    seq: int
    hash: str = Field(max_length=64)
    at: datetime = Field(sa_type=UTCDateTime)
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=200)


# --- scheduler -----------------------------------------------------------------------------


class SchedulerLease(SQLModel, table=True):
    """Leader election: whoever holds an unexpired lease schedules.

    ``token`` grows by one at every change of holder and fences writes: each scheduler
    transaction first renews the lease *with its token*, so a stale leader's writes fail.
    """

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=100)
    token: int
    expires_at: datetime = Field(sa_type=UTCDateTime)


class JobMetric(SQLModel, table=True):
    """A metrics sample reported by a job's workers (loss, tokens/s, step time ...)."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=40)
    attempt: int
    at: datetime = Field(sa_type=UTCDateTime)
    step: int
    values: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class JobLog(SQLModel, table=True):
    """A line of a job's log as seen by its supervisor."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=40)
    attempt: int
    at: datetime = Field(sa_type=UTCDateTime)
    line: str = Field(max_length=4000)


# --- policies ------------------------------------------------------------------------------


class PolicyVersion(SQLModel, table=True):
    """A stored Cedar policy set. Exactly one is active; none means the shipped set."""

    id: int | None = Field(default=None, primary_key=True)
    policy_text: str
    schema_text: str
    policy_set_hash: str = Field(index=True, max_length=64)
    version: str = Field(max_length=40)
    note: str = Field(default="", max_length=500)
    active: bool = False
    created_by: str = Field(max_length=40)
    created_at: datetime = Field(sa_type=UTCDateTime)
