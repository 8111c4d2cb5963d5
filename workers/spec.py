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

from workers.knobs import LORA_TARGETS

JOB_KINDS = ("finetune", "lora", "distill", "inference", "pretrain")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the offending field."""


@dataclass
class ModelRef:
    """A model: preset name or local directory, optional local weights and config overrides.

    ``adapter_dir`` is a LoRA adapter directory an earlier lora job exported (``adapter/``):
    peft applies it on top of the base for inference, a lora job goes on training it, and
    the other kinds start from the base with the adapter merged in.
    """

    name: str = "axk1-tiny"
    weights_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    adapter_dir: str | None = None


@dataclass
class DataSpec:
    """A dataset on local disk: JSONL (``text``, ``prompt``/``completion`` or chat
    ``messages``) or plain text.

    ``id`` is the control plane's dataset id, recorded in the provenance manifest.
    """

    path: str = ""
    format: str = "auto"  # auto | jsonl | text
    text_field: str = "text"
    id: str | None = None


@dataclass
class LoraSpec:
    """peft LoRA settings.

    ``targets``: projection names out of :data:`workers.knobs.LORA_TARGETS`; None adapts
    every attention, MLP and routed-expert projection the model has. The routed experts'
    fused ``gate_up_proj`` goes with ``gate_proj``/``up_proj``, their ``down_proj`` with
    ``down_proj``.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] | None = None


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
    activation_checkpointing: bool | None = None  # None: the capacity planner's choice
    checkpoint_every: int = 0  # steps; 0 = only on a preemption notice and at the end
    checkpoint_dir: str | None = None  # default <output_dir>/checkpoints
    keep_checkpoints: int = 0  # newest step-<n> checkpoints kept after each save; 0 = all
    eval_fraction: float = 0.0  # held-out share of the examples (0: no validation split)
    eval_every: int = 0  # steps between evaluations of the held-out split; 0 = at the end
    system_prompt: str | None = None  # system turn for records / prompts without one
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
        self._validate_research_fields()

    def _validate_research_fields(self) -> None:
        if self.activation_checkpointing not in (None, True, False):
            raise SpecError(
                f"activation_checkpointing: {self.activation_checkpointing!r} is not a boolean"
            )
        for name in ("keep_checkpoints", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecError(f"{name}: must be a whole number >= 0, got {value!r}")
        fraction = self.eval_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise SpecError(f"eval_fraction: must be a number, got {fraction!r}")
        if not 0.0 <= fraction < 1.0:
            raise SpecError(f"eval_fraction: must be in [0, 1), got {fraction!r}")
        if self.kind == "inference" and (fraction or self.eval_every):
            raise SpecError("eval_fraction: only training jobs hold out a validation split")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise SpecError("system_prompt: must be a string")
        targets = self.lora.targets
        if targets is not None:
            if not isinstance(targets, list | tuple) or not targets:
                raise SpecError("lora.targets: a non-empty list of projection names, or null")
            unknown = [t for t in targets if t not in LORA_TARGETS]
            if unknown:
                raise SpecError(
                    f"lora.targets: {', '.join(map(repr, unknown))} not among "
                    f"{', '.join(LORA_TARGETS)}"
                )
            if len(set(targets)) != len(targets):
                raise SpecError("lora.targets: a projection is named twice")
        for where, ref in (("model", self.model), ("teacher", self.teacher)):
            if ref is None or ref.adapter_dir is None:
                continue
            if not isinstance(ref.adapter_dir, str) or not ref.adapter_dir:
                raise SpecError(f"{where}.adapter_dir: a local directory path")
            if "://" in ref.adapter_dir:
                raise SpecError(f"{where}.adapter_dir: stage the adapter to a local path first")


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
