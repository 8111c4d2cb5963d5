"""The byte-level tokenizer tiny presets use instead of a downloaded one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.tokenizer import ByteTokenizer, ChatError, LocalHFTokenizer, load_tokenizer

tok = ByteTokenizer()


@given(st.text())
def test_encode_decode_round_trips_any_text(text: str) -> None:
    ids = tok.encode(text)
    assert all(tok.OFFSET <= i < tok.vocab_size for i in ids)
    assert tok.system_id not in ids  # the system marker sits in a byte slot UTF-8 never uses
    assert tok.decode(ids) == text


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text())))
def test_chat_round_trips_korean_and_any_text(turns: list[tuple[str, str]]) -> None:
    messages = [{"role": r, "content": c} for r, c in [*turns, ("assistant", "좋아요")]]
    ids, is_target = tok.chat(messages)
    assert len(ids) == len(is_target) and ids[0] == tok.bos_id
    assert tok.decode(ids) == "".join(m["content"] for m in messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert tok.decode([i for i, t in zip(ids, is_target, strict=True) if t]) == "".join(replies)
    assert sum(i == tok.eos_id for i, t in zip(ids, is_target, strict=True) if t) == len(replies)


def test_the_chat_template_starts_like_the_generation_prompt() -> None:
    messages = [
        {"role": "system", "content": "너는 비서다"},
        {"role": "user", "content": "안녕"},
        {"role": "assistant", "content": "안녕하세요"},
    ]
    ids, _ = tok.chat(messages)
    prompt = tok.chat_prompt("안녕", think=False, system="너는 비서다")
    assert ids[: len(prompt)] == prompt
    assert tok.decode_with_specials(ids) == (
        "<s><|system|>너는 비서다<|user|>안녕<|assistant|><think></think>안녕하세요</s>"
    )
    with pytest.raises(ChatError):
        tok.chat([{"role": "user", "content": "no reply"}])


def test_decode_drops_special_tokens_and_survives_cut_characters() -> None:
    ids = [tok.bos_id, *tok.encode("한국"), tok.eos_id]
    assert tok.decode(ids) == "한국"
    assert tok.decode(tok.encode("한")[:2]) == "\ufffd"


def test_think_flag_changes_the_prompt() -> None:
    thinking = tok.chat_prompt("hi", think=True)
    direct = tok.chat_prompt("hi", think=False)
    assert thinking[-1] == tok.think_id
    assert direct[-2:] == [tok.think_id, tok.end_think_id]
    assert tok.decode(direct) == "hi"


def test_a_saved_byte_tokenizer_is_found_again(tmp_path) -> None:
    tok.save(tmp_path)
    assert isinstance(load_tokenizer("model-dir", tmp_path), ByteTokenizer)


def _local_chat_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer with a ChatML template, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    inner = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(str(directory))


def test_a_model_tokenizer_renders_chats_with_its_own_template(tmp_path) -> None:
    _local_chat_tokenizer(tmp_path)
    hf = load_tokenizer("model-dir", tmp_path)
    assert isinstance(hf, LocalHFTokenizer)
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "안녕"},
        {"role": "assistant", "content": "반가워"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    ids, is_target = hf.chat(messages)
    targets = [i for i, t in zip(ids, is_target, strict=True) if t]
    assert hf.decode(targets) == "반가워\na2\n"  # replies with their end-of-turn
    assert hf.eos_id in targets
    prompt = hf.chat_prompt("안녕", think=False, system="sys")
    assert ids[: len(prompt)] == prompt
    assert hf.decode(prompt).endswith("assistant\n")
