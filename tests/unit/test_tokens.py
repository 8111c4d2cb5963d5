"""Token format: prefix, checksum, hashing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane import tokens


def test_generated_tokens_are_well_formed_and_distinct() -> None:
    made = {tokens.generate() for _ in range(200)}
    assert len(made) == 200
    for t in made:
        assert t.startswith("nuri_") and len(t) == 43
        assert tokens.well_formed(t)
        assert tokens.digest(t) != t and len(tokens.digest(t)) == 64


@given(pos=st.integers(min_value=5, max_value=42), char=st.sampled_from("aZ09"))
def test_any_single_character_change_breaks_the_checksum(pos: int, char: str) -> None:
    t = tokens.generate()
    if t[pos] == char:
        return
    mutated = t[:pos] + char + t[pos + 1 :]
    assert not tokens.well_formed(mutated)


@given(
    st.text(max_size=60)
    | st.text(alphabet="abcXYZ019", min_size=38, max_size=38).map(lambda body: "nuri_" + body)
)
def test_random_text_is_not_a_token(text: str) -> None:
    assert not tokens.well_formed(text)


def test_truncated_token_is_refused() -> None:
    t = tokens.generate()
    assert not tokens.well_formed(t[:-1])
    assert not tokens.well_formed(t + "a")
