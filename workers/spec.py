"""The job spec: everything a worker process needs to run one job, as plain data.

The control plane's supervisor writes a spec as JSON (or YAML) and launches
``python -m workers.run --spec spec.json`` (or :func:`workers.distributed.run_on_ray`). A spec
is a tree of dataclasses built by :func:`JobSpec.from_dict`, which rejects unknown fields and
bad values with a :class:`SpecError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

JOB_KINDS = ("finetune", "lora", "distill", "inference", "pretrain")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the offending field."""


@dataclass
class ModelRef:
    """A model: preset name or local directory, optional local weights and config overrides."""

    name: str = "axk1-tiny"
    weights_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """A dataset on local disk: JSONL (``text`` or ``prompt``/``completion``) or plain text.

    ``id`` is the control plane's dataset id, recorded in the provenance manifest.
    """

    path: str = ""
    format: str = "auto"  # auto | jsonl | text
    text_field: str = "text"
    id: str | None = None


@dataclass
class LoraSpec:
    """peft LoRA settings (targets: attention, MLP and routed-expert projections)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0


@dataclass
class DistillSpec:
    """Knowledge distillation: KL on temperature-softened logits plus optional hard CE."""

    temperature: float = 2.0
    hard_label_weight: float = 0.0  # weight of next-token CE; KD gets 1 - this


@dataclass
class InferenceSpec:
    """Batch generation settings; a request's own ``think``/``max_new_tokens`` win."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    think: bool = False
    batch_size: int = 8
    output_file: str = "outputs.jsonl"


@dataclass
class ReportSpec:
    """Where metrics and events go: ``jsonl`` file, ``http`` (control plane) or ``none``."""

    kind: str = "jsonl"
    path: str | None = None  # jsonl: default <output_dir>/events.jsonl
    url: str | None = None  # http: control-plane base URL
    token_env: str = "NURI_JOB_TOKEN"  # http: environment variable holding the bearer token


@dataclass
class JobSpec:
    """One job for the workers (see the module docstring)."""

    job_id: str
    kind: str
    output_dir: str
    model: ModelRef = field(default_factory=ModelRef)
    data: DataSpec | None = None
    teacher: ModelRef | None = None
    precision: str = "bf16"  # planning precision of weights (bf16 | fp8)
    seq_len: int = 128
    micro_batch: int = 4
    grad_accum: int = 1
    steps: int = 50
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    engine: str = "deepspeed"  # deepspeed | torch (a plain loop, for comparison and debugging)
    zero_stage: int | None = None  # None: the capacity planner's choice
    checkpoint_every: int = 0  # steps; 0 = only on a preemption notice and at the end
    checkpoint_dir: str | None = None  # default <output_dir>/checkpoints
    resume: bool = True  # continue from the latest checkpoint when there is one
    preemption_flag: str | None = None  # a file whose appearance asks the job to stop
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    gpu_memory_gib: float = 141.0  # pool shape for the plan the job runs under
    gpus_per_node: int = 8
    lora: LoraSpec = field(default_factory=LoraSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    inference: InferenceSpec = field(default_factory=InferenceSpec)
    report: ReportSpec = field(default_factory=ReportSpec)

    @property
    def checkpoint_path(self) -> Path:
        """Directory of this job's checkpoints."""
        return Path(self.checkpoint_dir or Path(self.output_dir) / "checkpoints")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobSpec:
        """Build and validate a spec from plain data (parsed JSON or YAML)."""
        spec = _build(cls, raw, "spec")
        spec.validate()
        return spec

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Load a ``.json`` or ``.yaml``/``.yml`` spec file."""
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a spec is a mapping")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal spec."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise :class:`SpecError` for values no job kind can run."""
        if self.kind not in JOB_KINDS:
            raise SpecError(f"kind: {self.kind!r} is not one of {', '.join(JOB_KINDS)}")
        if not self.job_id:
            raise SpecError("job_id: required")
        if self.kind != "inference" and (self.data is None or not self.data.path):
            raise SpecError(f"data.path: a {self.kind} job needs a dataset")
        if self.kind == "inference" and (self.data is None or not self.data.path):
            raise SpecError("data.path: an inference job needs a JSONL prompt file")
        if self.kind == "distill" and self.teacher is None:
            raise SpecError("teacher: a distill job needs a teacher model")
        if self.kind != "distill" and self.teacher is not None:
            raise SpecError("teacher: only distill jobs take a teacher")
        if self.engine not in ("deepspeed", "torch"):
            raise SpecError(f"engine: {self.engine!r} is not deepspeed or torch")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            raise SpecError(f"zero_stage: {self.zero_stage!r} is not 0-3")
        if self.precision not in ("bf16", "fp8"):
            raise SpecError(f"precision: {self.precision!r} is not bf16 or fp8")
        if self.report.kind not in ("jsonl", "http", "none"):
            raise SpecError(f"report.kind: {self.report.kind!r} is not jsonl, http or none")
        if self.report.kind == "http" and not self.report.url:
            raise SpecError("report.url: required for http reporting")
        for name in ("seq_len", "micro_batch", "grad_accum", "steps", "log_every"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name}: must be at least 1")
        if self.lr <= 0:
            raise SpecError("lr: must be positive")
        if not 0.0 <= self.distill.hard_label_weight <= 1.0:
            raise SpecError("distill.hard_label_weight: must be in [0, 1]")
        if self.distill.temperature <= 0:
            raise SpecError("distill.temperature: must be positive")


T = TypeVar("T")


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        nested = _NESTED.get(name)
        if nested is not None and value is not None:
            kwargs[name] = _build(nested, value, f"{where}.{name}")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required field
        raise SpecError(f"{where}: {exc}") from exc


_NESTED: dict[str, type] = {
    "model": ModelRef,
    "teacher": ModelRef,
    "data": DataSpec,
    "lora": LoraSpec,
    "distill": DistillSpec,
    "inference": InferenceSpec,
    "report": ReportSpec,
}
