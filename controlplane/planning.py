"""The capacity planner at the API: ``POST /v1/plan`` and the check at submission.

A job asking for fewer GPUs than its plan needs in every pool it may use can never run well,
so it is refused at once (422 ``insufficient_gpus``, the plan in ``details``) instead of
failing hours later with out-of-memory. Plans come from ``workers.planner`` (parameter counts
of the model's config on the meta device) and are cached; the first one in a process pays the
transformers import (seconds).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import Any

from controlplane.errors import InvalidRequest

# The presets (workers.presets.PRESETS; a test keeps them equal): the planner sizes them from
# their configuration. Registered models of unknown architecture are not checked here.
PLANNABLE = frozenset(
    {"axk1", "axk1-mini", "axk1-tiny", "student-70b", "student-8b", "student-mini", "student-tiny"}
)


class InsufficientGpus(InvalidRequest):
    code = "insufficient_gpus"


CONFIG_PREFIX = "config:"


def plannable(model: str | None) -> bool:
    """Whether the planner can size ``model`` (a preset, or a registered configuration)."""
    return model is not None and (model in PLANNABLE or model.startswith(CONFIG_PREFIX))


def _architecture(model: str | None) -> Any:
    """A preset name as it is; a registered configuration as a transformers config."""
    if model is None or not model.startswith(CONFIG_PREFIX):
        return model
    from transformers import AutoConfig

    raw = json.loads(model[len(CONFIG_PREFIX) :])
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


# transformers' lazy module is not safe to import from several threads at once (a concurrent
# first import raises ImportError for names that exist), and plans are cached after the first
# computation: one lock around planning costs little and removes the race.
_lock = threading.Lock()


def _planner() -> Any:
    from workers import planner  # heavy (torch, transformers): only when a plan is needed

    return planner


def plan_request(body: dict[str, Any], pool: tuple[float, int] | None) -> dict[str, Any]:
    """``POST /v1/plan``: a plan for the body (``workers.planner.plan_from_request`` fields)."""
    with _lock:
        planner = _planner()
        default = planner.PoolSpec(pool[0], pool[1]) if pool else None
        try:
            result = planner.plan_from_request(body, default)
        except planner.PlanError as exc:
            raise InvalidRequest(
                str(exc), code=getattr(exc, "code", "invalid_plan_request")
            ) from None
    out: dict[str, Any] = result.to_dict()
    return out


def check_submission(
    kind: str,
    model: str,
    teacher: str | None,
    config: dict[str, Any],
    gpus: int,
    nodes: int,
    pools: Sequence[tuple[str, float, int]],
) -> None:
    """Refuse a job whose plan needs more GPUs than it asks for in every candidate pool.

    ``pools`` are (name, GPU memory GiB, GPUs per node). ``model`` is what trains (the
    student of a distillation): a preset name or ``config:<json>``, the architecture
    registered with a model (see ``controlplane.execution.plan_key``). Models the planner
    cannot size (registered without a readable configuration) are not checked here.
    """
    if not plannable(model) or (kind == "distill" and not plannable(teacher)):
        return
    with _lock:
        _check(kind, model, teacher, config, gpus, nodes, pools)


@functools.lru_cache(maxsize=4096)
def _plan(
    kind: str,
    model: str,
    teacher: str | None,
    options: tuple[tuple[str, Any], ...],
    memory: float,
    per_node: int,
) -> Any:
    """One plan, memoised: the same request shape is planned once per process."""
    planner = _planner()
    spec = planner.PoolSpec(memory, per_node)
    arch = _architecture(model)
    if kind == "distill":
        return planner.plan(arch, kind, pool=spec, teacher=_architecture(teacher), **dict(options))
    return planner.plan(arch, kind, pool=spec, **dict(options))


def plan_for(
    kind: str,
    model: str,
    teacher: str | None,
    config: dict[str, Any],
    memory: float,
    per_node: int,
) -> Any:
    """The planner's plan of a job's shape (``workers.planner.Plan``), memoised."""
    with _lock:
        return _plan(kind, model, teacher, _options(config), memory, per_node)


def _options(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (key, config[key])
        for key in ("precision", "seq_len", "micro_batch", "lora_rank")
        if key in config and isinstance(config[key], str | int | float)
    )


def _check(
    kind: str,
    model: str,
    teacher: str | None,
    config: dict[str, Any],
    gpus: int,
    nodes: int,
    pools: Sequence[tuple[str, float, int]],
) -> None:
    planner = _planner()
    options = _options(config)
    plans: dict[str, Any] = {}
    try:
        for name, memory, per_node in pools:
            p = _plan(kind, model, teacher, options, memory, per_node)
            if planner.fits(p, gpus, nodes):
                return
            plans[name] = p
    except (planner.PlanError, TypeError, ValueError, KeyError) as exc:
        shown = "a registered configuration" if model.startswith(CONFIG_PREFIX) else model
        raise InvalidRequest(
            f"cannot plan this job: {exc}",
            code="invalid_plan_request",
            details={"kind": kind, "model": shown},
        ) from None
    smallest = min(plans.items(), key=lambda kv: kv[1].gpus)
    raise InsufficientGpus(
        planner.shortfall(smallest[1], gpus, nodes) or "the job needs more GPUs",
        details={"requested_gpus": gpus, "plans": {n: p.to_dict() for n, p in plans.items()}},
    )


_warm = threading.Event()


def warm_up() -> None:
    """Import the planner and size one preset, so no user request pays the import."""
    try:
        check_submission("inference", "axk1-tiny", None, {}, 1, 1, [("warm-up", 80.0, 8)])
    except Exception:  # a warm-up failure surfaces on the first real plan instead
        return
    finally:
        _warm.set()


def is_warm() -> bool:
    """Whether a warm-up has run (submissions then plan at full speed): ``/readyz``."""
    return _warm.is_set()


def warm_up_in_background() -> threading.Thread:
    thread = threading.Thread(target=warm_up, name="nuri-planner-warm-up", daemon=True)
    thread.start()
    return thread
