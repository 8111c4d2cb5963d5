"""Datasets for the loops: JSONL or text on local disk, tokenised into fixed-length examples.

Three shapes of example, all ``seq_len`` long with labels already shifted by the model:

* *packed text* (pretraining corpora, ``{"text": ...}`` records): documents joined with EOS and
  cut into blocks, every token a target;
* *prompt/completion* records (fine-tuning): the chat prompt (non-thinking) followed by the
  completion; only completion tokens are targets (prompt labels are -100), padded to length;
* *chat* records (``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}``,
  multi-turn): rendered by the tokenizer's chat template; only the assistant turns are
  targets.

A spec's ``system_prompt`` becomes the system turn of prompt/completion and chat records that
have none. An example cut at ``seq_len`` before its first target is dropped (it would teach
nothing). :func:`split_examples` holds out a seeded share of the examples for validation.

:class:`BatchStream` yields the same batches in the same order for a given seed, shards them
over ranks, and exposes its position (epoch, step in epoch) so a resumed job continues with
exactly the batch the interrupted one would have seen next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.tokenizer import ChatError, Tokenizer, check_messages, with_system

IGNORE_INDEX = -100


class DataError(ValueError):
    """A dataset that is missing, remote or has no usable records."""


def _local(path: str) -> Path:
    if "://" in path:
        # The supervisor stages object-store inputs to local disk before the job starts,
        # after the residency check; workers never fetch data themselves.
        raise DataError(f"{path}: stage object-store data to a local path first")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file or directory")
    return p


def read_records(path: str, fmt: str = "auto", text_field: str = "text") -> list[dict[str, Any]]:
    """Records of a JSONL file, a text file (one record) or a directory of ``.txt``/``.jsonl``."""
    p = _local(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    records: list[dict[str, Any]] = []
    for f in files:
        if f.is_dir():
            continue
        kind = fmt if fmt != "auto" else ("jsonl" if f.suffix in (".jsonl", ".json") else "text")
        if kind == "jsonl":
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{f}:{n}: not JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{f}:{n}: a record must be a JSON object")
                if text_field != "text" and text_field in record:
                    record = {**record, "text": record[text_field]}
                records.append(record)
        elif kind == "text":
            records.append({"text": f.read_text(encoding="utf-8")})
        else:
            raise DataError(f"unknown data format {fmt!r} (auto, jsonl, text)")
    if not records:
        raise DataError(f"{path}: no records")
    return records


@dataclass
class Examples:
    """Tokenised examples: ``input_ids`` and ``labels``, both (n, seq_len) int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor) -> Examples:
        """The examples at ``index`` (a 1-D tensor of row numbers), in that order."""
        return Examples(self.input_ids[index], self.labels[index], self.attention_mask[index])


def build_examples(
    records: list[dict[str, Any]],
    tokenizer: Tokenizer,
    seq_len: int,
    system_prompt: str | None = None,
) -> Examples:
    """Tokenise ``records`` into fixed-length examples (see the module docstring)."""
    stream: list[int] = []
    # Token ids and, per id, whether it is a target.
    turns: list[tuple[list[int], list[bool]]] = []
    for n, record in enumerate(records):
        if "messages" in record:
            try:
                messages = with_system(check_messages(record["messages"]), system_prompt)
                turns.append(tokenizer.chat(messages))
            except ChatError as exc:
                raise DataError(f"record {n + 1}: {exc}") from exc
        elif "prompt" in record and "completion" in record:
            prompt = tokenizer.chat_prompt(
                str(record["prompt"]), think=bool(record.get("think")), system=system_prompt
            )
            completion = [*tokenizer.encode(str(record["completion"])), tokenizer.eos_id]
            turns.append(([*prompt, *completion], [False] * len(prompt) + [True] * len(completion)))
        elif "text" in record:
            stream.extend([*tokenizer.encode(str(record["text"])), tokenizer.eos_id])
        else:
            raise DataError(
                f"record {n + 1} needs 'text', 'prompt' + 'completion' or 'messages': "
                f"{sorted(record)}"
            )
    ids: list[list[int]] = []
    labels: list[list[int]] = []
    masks: list[list[int]] = []
    for start in range(0, len(stream) - seq_len + 1, seq_len):
        block = stream[start : start + seq_len]
        ids.append(block)
        labels.append(list(block))
        masks.append([1] * seq_len)
    cut = 0
    for all_tokens, is_target in turns:
        tokens = all_tokens[:seq_len]
        target = [t if keep else IGNORE_INDEX for t, keep in zip(tokens, is_target, strict=False)]
        if all(t == IGNORE_INDEX for t in target):
            cut += 1  # no target left within seq_len
            continue
        pad = seq_len - len(tokens)
        ids.append(tokens + [tokenizer.pad_id] * pad)
        labels.append(target + [IGNORE_INDEX] * pad)
        masks.append([1] * len(tokens) + [0] * pad)
    if not ids:
        if cut:
            raise DataError(f"no record has a target within seq_len={seq_len} tokens")
        raise DataError(f"the data holds fewer than seq_len={seq_len} tokens")
    return Examples(torch.tensor(ids), torch.tensor(labels), torch.tensor(masks))


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(train, held out): a seeded ``fraction`` of the examples (at least one) held out.

    The same examples, seed and fraction always give the same split, on every rank; the
    held-out examples never reach the training stream.
    """
    n = len(examples)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"eval_fraction: {fraction} is not in (0, 1)")
    if n < 2:
        raise DataError(f"eval_fraction: {n} example(s) cannot be split into train and eval")
    held = min(n - 1, max(1, round(n * fraction)))
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919)
    order = torch.randperm(n, generator=g)
    eval_idx, train_idx = order[:held].sort().values, order[held:].sort().values
    return examples.select(train_idx), examples.select(eval_idx)


class BatchStream:
    """Deterministic, resumable, rank-sharded batches over :class:`Examples`.

    Each epoch is a permutation drawn from ``seed + epoch``; a global batch of
    ``micro_batch * world_size`` indices is split so rank r takes every world_size-th one.
    """

    def __init__(
        self, examples: Examples, micro_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(examples) < micro_batch * world_size:
            # Repeat small datasets so every rank always gets a full batch.
            reps = -(-micro_batch * world_size // len(examples))
            examples = Examples(
                examples.input_ids.repeat(reps, 1),
                examples.labels.repeat(reps, 1),
                examples.attention_mask.repeat(reps, 1),
            )
        self.examples = examples
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.step_in_epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches in one pass over the data."""
        return len(self.examples) // (self.micro_batch * self.world_size)

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's next micro-batch; advances the position."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        order = self._order()
        global_size = self.micro_batch * self.world_size
        start = self.step_in_epoch * global_size
        idx = order[start : start + global_size][self.rank :: self.world_size]
        self.step_in_epoch += 1
        return {
            "input_ids": self.examples.input_ids[idx],
            "labels": self.examples.labels[idx],
            "attention_mask": self.examples.attention_mask[idx],
        }

    def state_dict(self) -> dict[str, int]:
        """Position to store in a checkpoint."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a stored position."""
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens the model processes in ``batch`` (for tokens/s)."""
    return int(batch["attention_mask"].sum().item())
