"""Tokenised examples and the resumable, rank-sharded batch stream."""

from __future__ import annotations

import json

import pytest
import torch

from workers.data import IGNORE_INDEX, BatchStream, DataError, build_examples, read_records
from workers.tokenizer import ByteTokenizer

tok = ByteTokenizer()


def _examples(n: int = 10):
    records = [{"text": f"record number {i} " * 3} for i in range(n)]
    return build_examples(records, tok, seq_len=16)


def test_packed_text_blocks_are_all_targets() -> None:
    ex = _examples()
    assert ex.input_ids.shape[1] == 16 and torch.equal(ex.input_ids, ex.labels)


def test_prompt_tokens_are_not_targets() -> None:
    ex = build_examples([{"prompt": "hi", "completion": "yo"}], tok, seq_len=16)
    prompt_len = len(tok.chat_prompt("hi", think=False))
    assert (ex.labels[0, :prompt_len] == IGNORE_INDEX).all()
    assert ex.labels[0, prompt_len : prompt_len + 3].tolist() == [*tok.encode("yo"), tok.eos_id]
    assert ex.attention_mask[0].sum() == prompt_len + 3


def test_same_seed_same_batches_and_resume_continues_exactly() -> None:
    a, b = BatchStream(_examples(), 2, seed=5), BatchStream(_examples(), 2, seed=5)
    for _ in range(7):  # crosses an epoch boundary
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])
    state = a.state_dict()
    expected = a.next_batch()["input_ids"]
    c = BatchStream(_examples(), 2, seed=5)
    c.load_state_dict(state)
    assert torch.equal(c.next_batch()["input_ids"], expected)


def test_ranks_see_disjoint_halves_of_each_global_batch() -> None:
    ex = _examples(12)
    r0, r1 = BatchStream(ex, 2, seed=1, rank=0, world_size=2), BatchStream(ex, 2, 1, 1, 2)
    rows0 = {tuple(x) for x in r0.next_batch()["input_ids"].tolist()}
    rows1 = {tuple(x) for x in r1.next_batch()["input_ids"].tolist()}
    assert len(rows0) == len(rows1) == 2 and not rows0 & rows1


def test_bad_inputs_are_reported(tmp_path) -> None:
    with pytest.raises(DataError, match="stage object-store"):
        read_records("s3://bucket/x.jsonl")
    bad = tmp_path / "x.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{oops\n")
    with pytest.raises(DataError, match=":2: not JSON"):
        read_records(str(bad))
    with pytest.raises(DataError, match="fewer than"):
        build_examples([{"text": "short"}], tok, seq_len=64)
