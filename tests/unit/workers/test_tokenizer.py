"""The byte-level tokenizer tiny presets use instead of a downloaded one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.tokenizer import ByteTokenizer, load_tokenizer

tok = ByteTokenizer()


@given(st.text())
def test_encode_decode_round_trips_any_text(text: str) -> None:
    ids = tok.encode(text)
    assert all(tok.OFFSET <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


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
