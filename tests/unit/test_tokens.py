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


def test_bootstrap_secrets_that_can_sign_in() -> None:
    assert tokens.bootstrap_problem(tokens.generate()) is None
    assert tokens.bootstrap_problem("x" * tokens.MIN_SECRET_LEN) is None
    assert tokens.bootstrap_problem("x" * (tokens.MIN_SECRET_LEN - 1)) is not None
    assert tokens.bootstrap_problem("nuri_" + "x" * 60) is not None  # refused before lookup


@given(st.text(max_size=80))
def test_an_accepted_bootstrap_secret_survives_the_authorization_header(text: str) -> None:
    problem = tokens.bootstrap_problem(text)
    assert problem is None or "nuri token new" in problem
    if problem is None:
        # What authenticate() does to "Bearer <secret>" gives the secret back unchanged, and
        # a secret in Nuri's namespace is one that passes its checksum.
        _, _, secret = f"Bearer {text}".partition(" ")
        assert secret.strip() == text and text.isascii()
        assert not text.startswith(tokens.PREFIX) or tokens.well_formed(text)
