"""Batch inference: a JSONL prompt file in, a JSONL output file out.

Each input line is ``{"id": ..., "prompt": "...", "think": bool?, "max_new_tokens": int?}``.
``think`` selects A.X K1's thinking mode per request (default from the spec); in thinking mode
the text the model writes before its end-of-thinking marker is returned as ``reasoning``.
Each output line is ``{"id", "prompt", "think", "output", "reasoning", "prompt_tokens",
"completion_tokens", "finish_reason"}`` in input order. With several ranks each takes every
world_size-th prompt and rank 0 merges the parts.

The spec's ``system_prompt`` is the system turn of every prompt; ``model.adapter_dir`` (a
LoRA adapter of an earlier job) is merged into the base before generating. At the end rank 0
reports one ``metrics`` event: ``step`` (= ``requests``, the prompts answered),
``requests``, ``completion_tokens`` and ``tokens_per_s`` over all ranks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from workers.data import DataError, read_records
from workers.presets import apply_adapter, load_model, resolve_model
from workers.provenance import describe_input, model_identity, write_manifest
from workers.runtime import JobContext, JobResult
from workers.spec import SpecError
from workers.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from workers.training import adapter_identity, only_the_artifact


def _end_think_id(tokenizer: Tokenizer) -> int | None:
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.end_think_id
    inner = getattr(tokenizer, "_tok", None)
    if inner is None:
        return None
    tid = inner.convert_tokens_to_ids("</think>")
    return None if tid is None or tid == inner.unk_token_id else int(tid)


def split_reasoning(ids: list[int], think: bool, tokenizer: Tokenizer) -> tuple[str | None, str]:
    """(reasoning, answer) of generated ``ids``; reasoning is None outside thinking mode."""
    end = _end_think_id(tokenizer)
    if not think or end is None:
        return None, tokenizer.decode(ids)
    if end in ids:
        cut = ids.index(end)
        return tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut + 1 :])
    return tokenizer.decode(ids), ""  # still thinking when the token budget ran out


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Tokenizer,
    requests: list[dict[str, Any]],
    defaults: Any,
    device: torch.device,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Generate for ``requests`` (left-padded into one batch); one output dict each."""
    prompts = [
        tokenizer.chat_prompt(str(r["prompt"]), bool(r["think"]), system=system) for r in requests
    ]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    max_new = max(int(r["max_new_tokens"]) for r in requests)
    sampling = defaults.temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sampling}
    if sampling:
        kwargs.update(temperature=defaults.temperature, top_p=defaults.top_p)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        **kwargs,
    )
    results = []
    for row, request in enumerate(requests):
        new = out[row, width:].tolist()[: int(request["max_new_tokens"])]
        finish = "length"
        if tokenizer.eos_id in new:
            new = new[: new.index(tokenizer.eos_id)]
            finish = "eos"
        reasoning, answer = split_reasoning(new, bool(request["think"]), tokenizer)
        results.append(
            {
                "id": request["id"],
                "prompt": request["prompt"],
                "think": bool(request["think"]),
                "output": answer,
                "reasoning": reasoning,
                "prompt_tokens": len(prompts[row]),
                "completion_tokens": len(new),
                "finish_reason": finish,
            }
        )
    return results


def load_requests(path: str, default_think: bool, default_max_new: int) -> list[dict[str, Any]]:
    """Prompt records with ids, think flags and token budgets filled in."""
    requests = []
    for n, record in enumerate(read_records(path, "jsonl")):
        if "prompt" not in record:
            raise DataError(f"{path}: record {n + 1} has no 'prompt'")
        requests.append(
            {
                "id": record.get("id", n),
                "prompt": record["prompt"],
                "think": bool(record.get("think", default_think)),
                "max_new_tokens": int(record.get("max_new_tokens", default_max_new)),
                "index": n,
            }
        )
    return requests


def run_inference(ctx: JobContext) -> JobResult:
    """Generate for every prompt in ``data.path`` and write ``inference.output_file``."""
    import torch.distributed as dist

    spec = ctx.spec
    if spec.data is None:
        raise SpecError("data.path: an inference job needs a JSONL prompt file")
    settings = spec.inference
    source = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    tokenizer = load_tokenizer(source.tokenizer, source.weights_dir)
    # One process driving every GPU of a node: transformers places layers across them.
    spread = ctx.device.type == "cuda" and ctx.world_size == 1 and torch.cuda.device_count() > 1
    if spread and source.weights_dir is not None:
        model = load_model(source, dtype=ctx.dtype, device_map="auto").eval()
    else:
        model = load_model(source, dtype=ctx.dtype, seed=spec.seed).to(ctx.device)
    if spec.model.adapter_dir is not None:
        model = apply_adapter(model, spec.model.adapter_dir, merge=True)
    model.eval()
    device = torch.device(model.device)
    requests = load_requests(spec.data.path, settings.think, settings.max_new_tokens)
    mine = requests[ctx.rank :: ctx.world_size]
    part = ctx.output_dir / f".{settings.output_file}.rank{ctx.rank}"
    t0 = time.perf_counter()
    generated = 0
    with part.open("w", encoding="utf-8") as f:
        for start in range(0, len(mine), settings.batch_size):
            chunk = mine[start : start + settings.batch_size]
            results = generate_batch(model, tokenizer, chunk, settings, device, spec.system_prompt)
            for req, res in zip(chunk, results, strict=True):
                generated += res["completion_tokens"]
                f.write(json.dumps({"index": req["index"], **res}, ensure_ascii=False) + "\n")
            if ctx.notice.requested():
                break  # inference keeps no state worth resuming: stop promptly
    if dist.is_initialized():
        dist.barrier()
    elapsed = time.perf_counter() - t0  # until the slowest rank finished
    preempted = ctx.notice.requested()
    if not ctx.is_main:
        mine_metrics = {"requests": len(mine), "completion_tokens": generated}
        return JobResult("preempted" if preempted else "succeeded", metrics=mine_metrics)
    rows: list[dict[str, Any]] = []
    for r in range(ctx.world_size):
        path = ctx.output_dir / f".{settings.output_file}.rank{r}"
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
        path.unlink()
    rows.sort(key=lambda row: row.pop("index"))
    out_path = ctx.output_dir / settings.output_file
    out_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    completion = sum(int(row["completion_tokens"]) for row in rows)
    metrics: dict[str, Any] = {
        "step": len(rows),
        "requests": len(rows),
        "completion_tokens": completion,
        "tokens_per_s": completion / elapsed if elapsed > 0 else 0.0,
    }
    ctx.events.emit("metrics", **metrics)
    if preempted:
        return JobResult("preempted", step=len(rows), metrics=metrics)
    base = model_identity(source.name, source.config, source.weights_dir, spec.seed)
    base.update(adapter_identity(spec.model.adapter_dir))
    manifest = write_manifest(
        ctx.output_dir,
        job_id=spec.job_id,
        kind=spec.kind,
        base_model=base,
        inputs=[describe_input(spec.data.path, spec.data.id)],
        extra={"spec": spec.to_dict(), "final_metrics": metrics},
    )
    only_the_artifact(manifest, Path(settings.output_file))
    ctx.events.emit("artifact", path=str(out_path), manifest=str(manifest), kind=spec.kind)
    return JobResult(
        "succeeded",
        step=len(rows),
        metrics=metrics,
        artifacts=[str(out_path)],
        manifest=str(manifest),
    )
