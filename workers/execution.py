"""The execution plan: the one object that crosses from the control plane to a job's workers.

The control plane builds it when it admits a job, from registered things only: the base
model (a preset, or a registered model or artifact with its URI, SHA-256 and labels), the
teacher of a distillation, the input datasets, the capacity plan (ranks, ZeRO stage,
activation checkpointing, micro-batch, precision) and the job's directories. It is stored
with the job and shown by ``GET /v1/jobs/{id}``. A worker receives nothing else and applies
it exactly: :func:`job_spec` turns it, with the local paths staging produced, into the
:class:`workers.spec.JobSpec` the loops run, and nothing in it is taken from a member's free
text (``knobs`` were validated against :mod:`workers.knobs`).

Frozen and versioned: ``version`` changes when a field changes meaning; a worker refuses a
plan of another version instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.knobs import KNOBS, KnobError, SyntheticKnobs, knobs_for

PLAN_VERSION = 1

# Inputs a plan can stage: registered datasets and artifacts on these stores.
SCHEMES = ("file", "s3")
ROLES = ("data", "model", "teacher", "adapter")


class PlanInvalid(ValueError):
    """A plan that must not run (wrong version, missing or inconsistent parts)."""


@dataclass(frozen=True, slots=True)
class InputPlan:
    """One registered thing the job reads, exactly as registered."""

    id: str  # dataset or artifact id
    name: str
    role: str  # data | model | teacher | adapter
    uri: str  # file:///absolute/path or s3://bucket/key (a trailing / is a prefix)
    sha256: str  # of the file, or of the canonical listing of a directory / prefix
    size_bytes: int
    version: int | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0] if "://" in self.uri else ""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """A model resolved: a preset architecture and/or registered weights (+ a LoRA adapter)."""

    ref: str  # what the job named: a preset name, a dataset id, an artifact id
    preset: str | None  # architecture preset; None when the config comes with the weights
    weights: InputPlan | None = None  # None: a small preset initialised from the seed
    adapter: InputPlan | None = None  # a LoRA adapter artifact applied on top of the weights
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """How the job is laid out: ranks = GPUs, and the memory recipe the planner chose."""

    ranks: int
    nodes: int
    ranks_per_node: int
    precision: str
    zero_stage: int | None  # None for inference
    activation_checkpointing: bool
    offload: bool  # optimizer/parameter offload to host memory (the planner never assumes it)
    micro_batch: int
    grad_accum: int
    seq_len: int
    gpu_memory_gib: float
    gpus_per_node: int  # of the pool's nodes


@dataclass(frozen=True, slots=True)
class JobDirs:
    """The job's own directories (absolute); a job writes nowhere else."""

    root: str
    inputs: str  # staged inputs, read-only once staged
    checkpoints: str
    output: str  # the exported artifact
    scratch: str

    @classmethod
    def under(cls, root: Path) -> JobDirs:
        return cls(
            root=str(root),
            inputs=str(root / "inputs"),
            checkpoints=str(root / "checkpoints"),
            output=str(root / "output"),
            scratch=str(root / "scratch"),
        )


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """Everything a job's workers run (see the module docstring)."""

    job_id: str
    attempt: int
    kind: str
    payload: str  # "model" (the real loops) or "synthetic" (the scheduler's test payload)
    model: ModelPlan | None
    teacher: ModelPlan | None
    inputs: tuple[InputPlan, ...]
    capacity: CapacityPlan
    knobs: dict[str, Any]
    dirs: JobDirs
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = list(out["inputs"])
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExecutionPlan:
        """Rebuild and validate a stored plan; raises :class:`PlanInvalid`."""
        if not isinstance(raw, dict) or raw.get("version") != PLAN_VERSION:
            version = raw.get("version") if isinstance(raw, dict) else None
            raise PlanInvalid(f"plan version {version!r}; this worker runs {PLAN_VERSION}")
        try:
            plan = cls(
                job_id=raw["job_id"],
                attempt=int(raw["attempt"]),
                kind=raw["kind"],
                payload=raw["payload"],
                model=_model(raw.get("model")),
                teacher=_model(raw.get("teacher")),
                inputs=tuple(InputPlan(**i) for i in raw["inputs"]),
                capacity=CapacityPlan(**raw["capacity"]),
                knobs=dict(raw["knobs"]),
                dirs=JobDirs(**raw["dirs"]),
                version=raw["version"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanInvalid(f"malformed plan: {exc}") from None
        plan.validate()
        return plan

    def validate(self) -> None:
        """Raise :class:`PlanInvalid` for a plan whose parts disagree."""
        if self.payload not in ("model", "synthetic"):
            raise PlanInvalid(f"payload {self.payload!r}")
        if self.kind == "serve":  # an endpoint's replica: not a batch kind (workers.serving)
            from workers.serving import check_serve_plan

            check_serve_plan(self)
            return
        try:
            knobs_for(self.kind, self.knobs)  # the stored knobs are still valid ones
        except KnobError as exc:
            raise PlanInvalid(f"{self.kind} knobs: {exc}") from None
        cap = self.capacity
        if cap.ranks != cap.nodes * cap.ranks_per_node or cap.ranks < 1:
            raise PlanInvalid(f"{cap.ranks} ranks on {cap.nodes} x {cap.ranks_per_node}")
        for d in (self.dirs.inputs, self.dirs.checkpoints, self.dirs.output, self.dirs.scratch):
            if not Path(d).is_absolute() or Path(d).parent != Path(self.dirs.root):
                raise PlanInvalid(f"job directory {d} is not directly under {self.dirs.root}")
        staged = [*self.inputs]
        for m in (self.model, self.teacher):
            if m is not None:
                staged += [x for x in (m.weights, m.adapter) if x is not None]
        for item in staged:
            if item.role not in ROLES or item.scheme not in SCHEMES:
                raise PlanInvalid(f"input {item.id}: role {item.role!r}, uri {item.uri!r}")
        if self.payload == "synthetic":
            return
        if self.model is None:
            raise PlanInvalid("a model job names its model")
        if (self.kind == "distill") != (self.teacher is not None):
            raise PlanInvalid("a teacher goes with distill jobs, and only with them")
        if not any(i.role == "data" for i in self.inputs):
            raise PlanInvalid(f"a {self.kind} job reads at least one dataset")


def _model(raw: dict[str, Any] | None) -> ModelPlan | None:
    if raw is None:
        return None
    weights, adapter = raw.get("weights"), raw.get("adapter")
    return ModelPlan(
        ref=raw["ref"],
        preset=raw.get("preset"),
        weights=InputPlan(**weights) if weights else None,
        adapter=InputPlan(**adapter) if adapter else None,
        labels=dict(raw.get("labels") or {}),
    )


def staged_path(plan: ExecutionPlan, item: InputPlan) -> Path:
    """Where staging puts ``item`` inside the job's input directory (ids are server-made)."""
    return Path(plan.dirs.inputs) / item.role / item.id


def job_spec(plan: ExecutionPlan) -> Any:
    """The :class:`workers.spec.JobSpec` that applies ``plan`` exactly (staged inputs)."""
    from workers.spec import JobSpec

    if plan.payload != "model":
        raise PlanInvalid("the synthetic payload has no job spec")
    knobs = knobs_for(plan.kind, plan.knobs)
    k: dict[str, Any] = knobs.model_dump()
    cap = plan.capacity
    raw: dict[str, Any] = {
        "job_id": plan.job_id,
        "kind": plan.kind,
        "output_dir": plan.dirs.output,
        "checkpoint_dir": plan.dirs.checkpoints,
        "model": _model_ref(plan, plan.model),
        "precision": cap.precision,
        "seq_len": cap.seq_len,
        "micro_batch": cap.micro_batch,
        "seed": k["seed"],
        "engine": "deepspeed",
        "zero_stage": cap.zero_stage,
        "activation_checkpointing": cap.activation_checkpointing,
        "gpu_memory_gib": cap.gpu_memory_gib,
        "gpus_per_node": cap.gpus_per_node,
        "system_prompt": k.get("system_prompt"),
        "report": {"kind": "none"},
        "resume": True,
    }
    data = [i for i in plan.inputs if i.role == "data"]
    if data:
        # Several datasets are read as one: staging puts each under inputs/data/<id>/.
        raw["data"] = {
            "path": str(Path(plan.dirs.inputs) / "data"),
            "id": ",".join(i.id for i in data),
        }
    if plan.kind == "inference":
        raw["inference"] = {
            key: k[key] for key in ("max_new_tokens", "temperature", "top_p", "think", "batch_size")
        }
    else:
        raw.update(
            steps=k["steps"],
            lr=k["lr"],
            warmup_steps=k["warmup_steps"],
            weight_decay=k["weight_decay"],
            grad_accum=cap.grad_accum,
            checkpoint_every=k["checkpoint_every"],
            keep_checkpoints=k["keep_checkpoints"],
            eval_fraction=k["eval_fraction"],
            eval_every=k["eval_every"],
        )
    if plan.kind == "lora":
        raw["lora"] = {
            "rank": k["lora_rank"],
            "alpha": k["lora_alpha"],
            "dropout": k["lora_dropout"],
            "targets": list(k["lora_targets"]) if k["lora_targets"] else None,
        }
    if plan.kind == "distill":
        raw["teacher"] = _model_ref(plan, plan.teacher)
        raw["distill"] = {
            "temperature": k["temperature"],
            "hard_label_weight": k["hard_label_weight"],
        }
    return JobSpec.from_dict(raw)


def _model_ref(plan: ExecutionPlan, model: ModelPlan | None) -> dict[str, Any]:
    if model is None:
        raise PlanInvalid("no model to run")
    weights = str(staged_path(plan, model.weights)) if model.weights else None
    out: dict[str, Any] = {"name": model.preset or weights, "weights_dir": weights}
    if model.preset is None:
        out["weights_dir"] = None  # the directory itself is the model
    if model.adapter is not None:
        out["adapter_dir"] = str(staged_path(plan, model.adapter))
    return out


def synthetic_knobs(plan: ExecutionPlan) -> SyntheticKnobs:
    """The synthetic payload's settings (the scheduler's tests)."""
    knobs = knobs_for(plan.kind, plan.knobs)
    if not isinstance(knobs, SyntheticKnobs):
        raise PlanInvalid("not a synthetic plan")
    return knobs


__all__ = [
    "KNOBS",
    "PLAN_VERSION",
    "CapacityPlan",
    "ExecutionPlan",
    "InputPlan",
    "JobDirs",
    "ModelPlan",
    "PlanInvalid",
    "job_spec",
    "staged_path",
]
