"""``nuri plan``: how many GPUs a job needs, computed locally by the workers' capacity planner.

Registered by ``controlplane.cli.main`` with ``app.command()(plan)``. It needs no server: the
planner is a pure function of the model configuration and the pool's shape.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from controlplane.cli.session import progress
from workers.planner import JOB_KINDS, PRECISIONS, Plan, PlanError, PoolSpec
from workers.planner import plan as compute_plan
from workers.presets import PRESETS

_MODEL_HELP = f"preset ({'|'.join(PRESETS)}) or a local model directory"


def _table(result: Plan) -> Table:
    table = Table(title=f"{result.kind} of {result.model} ({result.precision})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows: list[tuple[str, str]] = [
        (
            "parameters",
            f"{result.total_params / 1e9:,.2f}B ({result.active_params / 1e9:,.2f}B active)",
        ),
        ("trainable", f"{result.trainable_params / 1e9:,.4f}B"),
        ("sequence x batch", f"{result.seq_len} x {result.micro_batch}"),
        ("pool GPU", f"{result.pool.gpu_memory_gib:g} GiB, {result.pool.gpus_per_node} per node"),
        ("GPUs", f"{result.gpus} on {result.nodes} node(s)"),
        ("ZeRO stage", "-" if result.zero_stage is None else str(result.zero_stage)),
        (
            "parallel (tp/pp/ep/dp)",
            f"{result.tensor_parallel}/{result.pipeline_parallel}/"
            f"{result.expert_parallel}/{result.data_parallel}",
        ),
        ("activation checkpointing", "yes" if result.activation_checkpointing else "no"),
    ]
    if result.teacher:
        rows.append(("teacher", result.teacher))
    if result.lora_rank:
        rows.append(("LoRA rank", str(result.lora_rank)))
    memory = result.memory_per_gpu.to_dict()
    total = memory.pop("total")
    for name, gib in memory.items():
        if gib:
            rows.append((f"memory/GPU {name}", f"{gib:,.2f} GiB"))
    rows.append(
        ("memory/GPU total", f"{total:,.2f} of {result.usable_memory_per_gpu_gib:,.2f} GiB usable")
    )
    for note in result.notes:
        rows.append(("note", note))
    for key, value in rows:
        table.add_row(key, value)
    return table


def plan(
    model: Annotated[str, typer.Option(help=_MODEL_HELP)] = "axk1",
    kind: Annotated[str, typer.Option(help="|".join(JOB_KINDS))] = "inference",
    precision: Annotated[str, typer.Option(help="|".join(PRECISIONS))] = "bf16",
    seq_len: Annotated[
        int | None, typer.Option(help="tokens per sequence (default: 4096, inference: native)")
    ] = None,
    batch: Annotated[int, typer.Option(help="micro-batch per GPU / concurrent sequences")] = 1,
    gpu_memory_gib: Annotated[float, typer.Option(help="memory of one GPU, GiB")] = 141.0,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs in one node")] = 8,
    teacher: Annotated[
        str | None, typer.Option(help="distill only: teacher preset or directory (axk1)")
    ] = None,
    lora_rank: Annotated[int, typer.Option(help="lora only: adapter rank")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Plan the GPUs, ZeRO stage and memory per GPU of a job on A.X K1 or a derived model."""
    console = Console()
    # The first plan of a process imports torch and transformers and builds the model on the
    # meta device to count its parameters: seconds when warm, half a minute from a cold disk.
    try:
        with progress(f"planning {kind} of {model} (loading torch and the model's shapes)"):
            pool = PoolSpec(gpu_memory_gib=gpu_memory_gib, gpus_per_node=gpus_per_node)
            result = compute_plan(
                model,
                kind,
                precision,
                seq_len,
                batch,
                pool,
                teacher=teacher,
                lora_rank=lora_rank,
            )
    except PlanError as exc:
        Console(stderr=True).print(f"[red]cannot plan:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.print(_table(result))
