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


def _targets(ex, row: int = 0) -> list[int]:
    return [t for t in ex.labels[row].tolist() if t != IGNORE_INDEX]


def test_chat_records_train_on_every_assistant_turn_only() -> None:
    messages = [
        {"role": "user", "content": "안녕하세요?"},
        {"role": "assistant", "content": "네, 반갑습니다."},
        {"role": "user", "content": "이름이 뭐예요?"},
        {"role": "assistant", "content": "A.X 입니다."},
    ]
    ex = build_examples([{"messages": messages}], tok, seq_len=128)
    ids, is_target = tok.chat(messages)
    n = len(ids)
    assert ex.input_ids[0, :n].tolist() == ids and ex.attention_mask[0].sum() == n
    # Labels are the assistant replies (each with its end-of-turn), -100 everywhere else.
    expected = [*tok.encode("네, 반갑습니다."), tok.eos_id, *tok.encode("A.X 입니다."), tok.eos_id]
    assert _targets(ex) == expected
    assert all(ex.labels[0, i] == IGNORE_INDEX for i in range(n) if not is_target[i])
    text = tok.decode(_targets(ex))
    assert text == "네, 반갑습니다.A.X 입니다."  # Korean survives the byte round trip


def test_the_system_prompt_goes_to_records_without_one() -> None:
    user = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    own = [{"role": "system", "content": "be brief"}, *user]
    ex = build_examples(
        [{"messages": user}, {"messages": own}, {"prompt": "hi", "completion": "yo"}],
        tok,
        seq_len=64,
        system_prompt="너는 비서다",
    )
    with_default = tok.chat([{"role": "system", "content": "너는 비서다"}, *user])[0]
    assert ex.input_ids[0, : len(with_default)].tolist() == with_default
    assert ex.input_ids[1, : len(tok.chat(own)[0])].tolist() == tok.chat(own)[0]
    prompt = tok.chat_prompt("hi", think=False, system="너는 비서다")
    assert ex.input_ids[2, : len(prompt)].tolist() == prompt
    assert _targets(ex, 2) == [*tok.encode("yo"), tok.eos_id]


def test_bad_chat_records_name_the_record_and_cut_ones_are_dropped() -> None:
    with pytest.raises(DataError, match="record 2: message 0"):
        build_examples(
            [{"text": "x" * 40}, {"messages": [{"role": "bot", "content": "?"}]}], tok, 16
        )
    with pytest.raises(DataError, match=r"record 1: .*assistant"):
        build_examples([{"messages": [{"role": "user", "content": "hi"}]}], tok, 16)
    long_prompt = {"prompt": "p" * 40, "completion": "c"}
    ex = build_examples([long_prompt, {"prompt": "q", "completion": "a"}], tok, seq_len=16)
    assert len(ex) == 1  # the first has no target within seq_len
    with pytest.raises(DataError, match="no record has a target"):
        build_examples([long_prompt], tok, seq_len=16)


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
