"""The demo datasets in controlplane/demo_data: format, counts, sizes and language."""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[2] / "controlplane" / "demo_data"
MAX_BYTES = 120 * 1024

# file -> (fewest records, most records)
COUNTS = {
    "ko-chat.jsonl": (140, 170),
    "en-chat.jsonl": (140, 170),
    "ko-text.jsonl": (180, 230),
    "en-text.jsonl": (180, 230),
    "prompts.jsonl": (20, 30),
}
CHAT = ["ko-chat.jsonl", "en-chat.jsonl"]
TEXT = ["ko-text.jsonl", "en-text.jsonl"]
KOREAN = ["ko-chat.jsonl", "ko-text.jsonl"]
ENGLISH = ["en-chat.jsonl", "en-text.jsonl"]
PROMPT_KEYS = {"id", "prompt", "think", "max_new_tokens"}


def hangul(s: str) -> int:
    """Hangul syllables (U+AC00-U+D7A3) in ``s``."""
    return sum("\uac00" <= c <= "\ud7a3" for c in s)


def latin(s: str) -> int:
    """ASCII letters in ``s``."""
    return sum(c.isascii() and c.isalpha() for c in s)


def load(name: str) -> list[dict[str, Any]]:
    """The records of ``name``: strict UTF-8, LF line endings, one JSON object per line."""
    text = (DATA / name).read_bytes().decode("utf-8")
    assert not text.startswith("\ufeff"), f"{name}: byte-order mark"
    assert "\r" not in text, f"{name}: CR line endings"
    assert text.endswith("\n"), f"{name}: no final newline"
    records = []
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line.strip(), f"{name}:{n}: blank line"
        record = json.loads(line)
        assert isinstance(record, dict), f"{name}:{n}: not a JSON object"
        records.append(record)
    return records


def contents(name: str) -> list[str]:
    """Every piece of text in ``name``, one string per record."""
    records = load(name)
    if name in CHAT:
        return ["\n".join(m["content"] for m in r["messages"]) for r in records]
    if name in TEXT:
        return [r["text"] for r in records]
    return [r["prompt"] for r in records]


def nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value == value.strip()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_file_parses_with_expected_count_and_size(name: str) -> None:
    size = (DATA / name).stat().st_size
    assert 1024 < size < MAX_BYTES, f"{name}: {size} bytes"
    fewest, most = COUNTS[name]
    assert fewest <= len(load(name)) <= most


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_files_are_reachable_as_package_data(name: str) -> None:
    resource = importlib.resources.files("controlplane") / "demo_data" / name
    assert resource.is_file()


@pytest.mark.parametrize("name", CHAT)
def test_chat_turns_alternate_and_end_with_the_assistant(name: str) -> None:
    for n, record in enumerate(load(name), 1):
        assert set(record) == {"messages"}, f"{name}:{n}"
        messages = record["messages"]
        assert isinstance(messages, list) and messages, f"{name}:{n}"
        for m in messages:
            assert isinstance(m, dict) and set(m) == {"role", "content"}, f"{name}:{n}"
            assert nonempty(m["content"]), f"{name}:{n}: empty or padded content"
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles, f"{name}:{n}: only a system turn"
        expected = ["user", "assistant"] * (len(roles) // 2)
        assert len(roles) % 2 == 0 and roles == expected, f"{name}:{n}: roles {roles}"


@pytest.mark.parametrize("name", CHAT)
def test_chat_files_mix_system_prompts_and_multi_turn_dialogues(name: str) -> None:
    records = [r["messages"] for r in load(name)]
    with_system = sum(m[0]["role"] == "system" for m in records)
    exchanges = [sum(t["role"] == "user" for t in m) for m in records]
    assert 0.15 * len(records) < with_system < 0.6 * len(records)
    assert exchanges.count(1) > len(records) // 2
    assert exchanges.count(2) >= 5 and exchanges.count(3) >= 5 and max(exchanges) <= 3


@pytest.mark.parametrize("name", TEXT)
def test_text_records_are_single_paragraphs(name: str) -> None:
    for n, record in enumerate(load(name), 1):
        assert set(record) == {"text"}, f"{name}:{n}"
        text = record["text"]
        assert nonempty(text) and "\n" not in text, f"{name}:{n}"
        sentences = len(re.findall(r"[.!?](?=\s|$)", text))
        assert 2 <= sentences <= 6, f"{name}:{n}: {sentences} sentences"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_no_duplicate_records(name: str) -> None:
    texts = contents(name)
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("name", KOREAN)
def test_korean_files_are_mostly_hangul(name: str) -> None:
    texts = contents(name)
    everything = "".join(texts)
    assert hangul(everything) / (hangul(everything) + latin(everything)) > 0.9
    for n, text in enumerate(texts, 1):
        assert hangul(text) > latin(text), f"{name}:{n}: more Latin than Hangul"


@pytest.mark.parametrize("name", ENGLISH)
def test_english_files_are_mostly_latin(name: str) -> None:
    everything = "".join(contents(name))
    assert hangul(everything) < 0.01 * latin(everything)


def test_prompts_have_unique_ids_and_valid_options() -> None:
    records = load("prompts.jsonl")
    for n, r in enumerate(records, 1):
        assert {"id", "prompt"} <= set(r) <= PROMPT_KEYS, f"prompts.jsonl:{n}"
        assert isinstance(r["id"], str) and re.fullmatch(r"p\d{2}", r["id"]), r["id"]
        assert nonempty(r["prompt"]), r["id"]
        if "think" in r:
            assert isinstance(r["think"], bool), r["id"]
        if "max_new_tokens" in r:
            budget = r["max_new_tokens"]
            assert type(budget) is int and 0 < budget <= 4096, r["id"]
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert sum(r.get("think") is True for r in records) >= 3
    assert sum(r.get("max_new_tokens") == 32 for r in records) >= 3
    korean = [r for r in records if hangul(r["prompt"]) > latin(r["prompt"])]
    assert 0.3 * len(records) <= len(korean) <= 0.7 * len(records)


def test_readme_describes_every_file_and_the_licence() -> None:
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name in COUNTS:
        assert f"`{name}`" in readme, name
    assert "Apache-2.0" in readme and "original" in readme
