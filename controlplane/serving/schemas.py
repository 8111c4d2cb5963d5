"""Request and response bodies of ``/v1/endpoints`` (the API's house rules: unknown fields
are refused, server-owned fields are never accepted)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from controlplane.api.schemas import Input, Output, Slug

AdapterName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
ModelRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]

MAX_REPLICAS = 64


class EndpointConfig(Input):
    """How each replica serves and how the endpoint scales (all optional)."""

    max_context: int = Field(default=2048, ge=16, le=131_072)
    max_tokens_default: int = Field(default=256, ge=1, le=131_072)
    max_ongoing_requests: int = Field(default=32, ge=1, le=1024)
    system_prompt: str | None = Field(default=None, max_length=8000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # Scaling: requests in flight per replica the controller aims at, seconds without a
    # request before an endpoint with min_replicas 0 goes to zero, and how long a request
    # waits for a first replica before 503.
    target_ongoing_requests: int = Field(default=4, ge=1, le=1024)
    idle_s: float = Field(default=300.0, ge=1.0, le=7 * 86400.0, allow_inf_nan=False)
    cold_start_timeout_s: float = Field(default=60.0, ge=1.0, le=3600.0, allow_inf_nan=False)
    # Per-token rate limits for this endpoint (None: the gateway's defaults).
    rpm: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm: int | None = Field(default=None, ge=1, le=10**12)

    @model_validator(mode="after")
    def _fits(self) -> EndpointConfig:
        if self.max_tokens_default >= self.max_context:
            raise ValueError(
                f"max_tokens_default ({self.max_tokens_default}) must be below max_context "
                f"({self.max_context}): the prompt needs room too"
            )
        return self


class EndpointCreate(Input):
    name: Slug
    model: ModelRef = Field(description="a base preset, a registered model or a model artifact")
    adapters: dict[
        AdapterName, Annotated[str, StringConstraints(pattern=r"^art_[A-Za-z0-9]+$")]
    ] = Field(
        default_factory=dict,
        max_length=16,
        description="LoRA adapter artifacts served on the same replicas: clients name "
        "one as model '<endpoint>:<adapter>'",
    )
    min_replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    gpus_per_replica: int = Field(default=1, ge=1, le=64)
    allowed_pools: list[str] = Field(default_factory=list, max_length=100)
    priority_class: str = Field(default="production-inference", max_length=63)
    config: EndpointConfig = Field(default_factory=EndpointConfig)

    @model_validator(mode="after")
    def _range(self) -> EndpointCreate:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class EndpointUpdate(Input):
    """What may change on a live endpoint (the model stays: create another endpoint)."""

    min_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    allowed_pools: list[str] | None = Field(default=None, max_length=100)
    config: EndpointConfig | None = None


class ReplicaPublic(Output):
    job_id: str
    index: int
    status: str
    guaranteed: bool
    pool: str | None
    nodes: list[str]
    reasons: list[dict[str, Any]] = Field(default_factory=list)
    started_at: datetime | None = None


class EndpointPublic(Output):
    id: str
    member_id: str
    name: str
    model: str
    adapters: dict[str, str]
    min_replicas: int
    max_replicas: int
    gpus_per_replica: int
    allowed_pools: list[str]
    priority_class: str
    config: dict[str, Any]
    state: str
    desired_replicas: int
    ready_replicas: int = 0
    replicas: list[ReplicaPublic] = Field(default_factory=list)
    tokens_served: int = 0
    requests_served: int = 0
    last_request_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
