"""What a member may tune in a job's ``config``: one schema per job kind, knobs only.

A job's ``config`` is validated against the schema of its kind before anything is stored:
unknown keys are refused (the error names the allowed ones), values are bounded. Nothing here
is a path, a command, a module or a model name: what a job reads (model, teacher, datasets)
is named at the top level of the job and resolved by the control plane into the
:class:`workers.execution.ExecutionPlan`; where it writes is decided by the control plane.

``{"payload": "synthetic"}`` selects the scheduler's own test payload (sleep-per-step, no
model); it must be asked for explicitly and a deployment may refuse it.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# peft targets a member may choose (attention, MLP and routed-expert projections).
LORA_TARGETS = (
    "q_a_proj",
    "q_b_proj",
    "q_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingKnobs(_Knobs):
    """finetune and pretrain: all weights train."""

    steps: int = Field(default=30, ge=1, le=10_000_000, description="optimizer steps")
    lr: float = Field(default=3e-3, gt=0, le=1.0, allow_inf_nan=False)
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000)
    weight_decay: float = Field(default=0.0, ge=0, le=1.0, allow_inf_nan=False)
    micro_batch: int = Field(default=4, ge=1, le=4096, description="sequences per rank step")
    grad_accum: int = Field(default=1, ge=1, le=4096)
    seq_len: int = Field(default=128, ge=8, le=131_072)
    precision: Literal["bf16", "fp8"] = "bf16"
    eval_fraction: float = Field(
        default=0.1, ge=0.0, le=0.5, allow_inf_nan=False, description="held-out share"
    )
    eval_every: int = Field(default=0, ge=0, le=10_000_000, description="0: at the end only")
    checkpoint_every: int = Field(default=10, ge=0, le=10_000_000, description="0: at stops")
    keep_checkpoints: int = Field(default=3, ge=1, le=100, description="newest kept")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    system_prompt: str | None = Field(
        default=None, max_length=8000, description="for chat records without a system turn"
    )


class LoraKnobs(TrainingKnobs):
    """lora: the base is frozen; adapters train (checkpoints and artifact hold them only)."""

    lora_rank: int = Field(default=8, ge=1, le=1024)
    lora_alpha: int = Field(default=16, ge=1, le=4096)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    lora_targets: tuple[Literal[LORA_TARGETS], ...] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, description="default: every projection present"
    )


class DistillKnobs(TrainingKnobs):
    """distill: the student (the job's model) learns the teacher's softened logits."""

    temperature: float = Field(default=2.0, gt=0, le=100.0, allow_inf_nan=False)
    hard_label_weight: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)


class InferenceKnobs(_Knobs):
    """inference: a prompts dataset in, one generation per record out."""

    max_new_tokens: int = Field(default=64, ge=1, le=131_072)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    think: bool = False
    batch_size: int = Field(default=8, ge=1, le=4096)
    precision: Literal["bf16", "fp8"] = "bf16"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    system_prompt: str | None = Field(default=None, max_length=8000)


class SyntheticKnobs(_Knobs):
    """The scheduler's test payload: no model, a sleep per step, checkpoints, failures."""

    payload: Literal["synthetic"]
    steps: int = Field(default=300, ge=1, le=10_000_000)
    step_seconds: float = Field(default=1.0, ge=0.0, le=3600.0, allow_inf_nan=False)
    checkpoint_every: int = Field(default=5, ge=1, le=10_000_000)
    fail_at_step: int | None = Field(default=None, ge=0, le=10_000_000)


# A multiplexed adapter's name as requests give it (``model`` suffix, Serve's model id).
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_ADAPTERS_PER_REPLICA = 16


class ServeKnobs(_Knobs):
    """serve: an endpoint's replicas. Not a batch kind: it is not in :data:`KNOBS`.

    ``adapters`` names the LoRA adapters an endpoint multiplexes on one base: each value is
    the id of an ``adapter`` input of the replica's plan (server-made), never a path.
    """

    max_context: int = Field(
        default=2048, ge=16, le=131_072, description="prompt + max_tokens must fit"
    )
    max_tokens_default: int = Field(default=256, ge=1, le=131_072)
    max_ongoing_requests: int = Field(default=32, ge=1, le=1024)
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="weights of a preset")
    system_prompt: str | None = Field(
        default=None, max_length=8000, description="for chats without a system turn"
    )
    adapters: dict[str, str] = Field(default_factory=dict, max_length=256)
    max_adapters_per_replica: int = Field(default=4, ge=1, le=MAX_ADAPTERS_PER_REPLICA)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, input_id in value.items():
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(
                    f"adapter name {name[:80]!r} does not match {ADAPTER_NAME.pattern}"
                )
            if not input_id or len(input_id) > 200:
                raise ValueError(f"adapter {name}: the input id must be 1..200 characters")
        return value


KNOBS: dict[str, type[_Knobs]] = {
    "finetune": TrainingKnobs,
    "pretrain": TrainingKnobs,
    "lora": LoraKnobs,
    "distill": DistillKnobs,
    "inference": InferenceKnobs,
}


class KnobError(ValueError):
    """A config the job's kind does not accept; ``details`` says which keys and why."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def is_synthetic(config: dict[str, Any]) -> bool:
    """Whether ``config`` asks for the synthetic payload."""
    return config.get("payload") == "synthetic"


def knobs_for(kind: str, config: dict[str, Any]) -> _Knobs:
    """Validate ``config`` for ``kind``; raise :class:`KnobError` naming what is wrong."""
    if kind not in KNOBS:
        raise KnobError(f"unknown job kind {kind!r}", {"kinds": sorted(KNOBS)})
    schema: type[_Knobs] = SyntheticKnobs if "payload" in config else KNOBS[kind]
    return _validated(schema, kind, config)


def serve_knobs(config: dict[str, Any]) -> ServeKnobs:
    """Validate an endpoint's serve ``config``; raise :class:`KnobError` naming what is wrong."""
    if not isinstance(config, dict):
        raise KnobError("the config of a serve endpoint must be an object", {"kind": "serve"})
    return cast(ServeKnobs, _validated(ServeKnobs, "serve", config))


def _validated(schema: type[_Knobs], kind: str, config: dict[str, Any]) -> _Knobs:
    allowed = sorted(schema.model_fields)
    unknown = sorted(k for k in config if k not in schema.model_fields)
    if unknown:
        hint = " (payload: only 'synthetic')" if "payload" in unknown else ""
        raise KnobError(
            f"config key(s) {', '.join(map(repr, unknown))} are not settings of a {kind} job"
            f"{hint}; allowed: {', '.join(allowed)}",
            {"unknown": unknown, "allowed": allowed, "kind": kind},
        )
    try:
        return schema.model_validate(config)
    except ValidationError as exc:
        problems = [
            {"key": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise KnobError(
            f"config.{first['key']}: {first['message']}",
            {"problems": problems, "allowed": allowed, "kind": kind},
        ) from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published schema of each kind's config (and of the synthetic payload)."""
    out = {kind: schema.model_json_schema() for kind, schema in KNOBS.items()}
    out["synthetic"] = SyntheticKnobs.model_json_schema()
    return out
