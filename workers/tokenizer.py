"""Tokenizers the job payloads use, behind one small protocol.

Tiny and mini presets use :class:`ByteTokenizer` (UTF-8 bytes plus a handful of special
tokens) so a CPU run needs no download. Real models load the tokenizer that ships in the
model's local directory through transformers, never from a hub.

Teacher and student must share a vocabulary for logit distillation; every byte-level preset
has the same ``vocab_size`` (``ByteTokenizer.vocab_size``) so any tiny teacher distils into
any tiny student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Written next to a saved byte-level model so a later job reloads the same tokenizer.
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What the loops need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens dropped."""
        ...

    def chat_prompt(self, prompt: str, think: bool) -> list[int]:
        """Ids of a single-turn chat prompt ending where the assistant starts to write.

        ``think=False`` selects non-thinking mode (an empty reasoning block is pre-filled).
        """
        ...

    def save(self, directory: Path) -> None:
        """Write what a later job needs to load this tokenizer from ``directory``."""
        ...


class ByteTokenizer:
    """UTF-8 bytes shifted past eight special tokens; vocabulary of 264."""

    SPECIALS = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<think>", "</think>", "<unk>")
    OFFSET = len(SPECIALS)

    @property
    def vocab_size(self) -> int:
        return 256 + self.OFFSET

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def user_id(self) -> int:
        return 3

    @property
    def assistant_id(self) -> int:
        return 4

    @property
    def think_id(self) -> int:
        return 5

    @property
    def end_think_id(self) -> int:
        return 6

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size)
        # A generated sequence can stop in the middle of a multi-byte character.
        return data.decode("utf-8", errors="replace")

    def decode_with_specials(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens rendered by name (used to split reasoning)."""
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if 0 <= i < self.OFFSET:
                parts.append(self.decode(run))
                run = []
                parts.append(self.SPECIALS[i])
            else:
                run.append(i)
        parts.append(self.decode(run))
        return "".join(parts)

    def chat_prompt(self, prompt: str, think: bool) -> list[int]:
        ids = [self.bos_id, self.user_id, *self.encode(prompt), self.assistant_id, self.think_id]
        if not think:
            ids.append(self.end_think_id)
        return ids

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        spec = {"kind": "bytes", "specials": list(self.SPECIALS), "vocab_size": self.vocab_size}
        (directory / BYTE_TOKENIZER_FILE).write_text(json.dumps(spec, indent=2))


class LocalHFTokenizer:
    """A transformers tokenizer loaded from a model directory on local disk."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        # local_files_only: a missing file must fail here, never trigger a hub download.
        self._tok: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        return int(self._tok.pad_token_id)

    @property
    def bos_id(self) -> int:
        bos = self._tok.bos_token_id
        return int(bos if bos is not None else self._tok.eos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self._tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, prompt: str, think: bool) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        if getattr(self._tok, "chat_template", None):
            # Templates name the switch differently; unknown keywords are ignored by Jinja.
            text = self._tok.apply_chat_template(
                messages,
                add_generation_prompt=True,
                tokenize=False,
                enable_thinking=think,
                thinking=think,
            )
            return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]
        return [self.bos_id, *self.encode(prompt)]

    def save(self, directory: Path) -> None:
        self._tok.save_pretrained(str(directory))


def load_tokenizer(kind: str, directory: Path | None = None) -> Tokenizer:
    """The tokenizer for a model: ``kind`` is ``"bytes"`` or ``"model-dir"``.

    A directory that holds ``byte_tokenizer.json`` (a saved tiny model) always gets the byte
    tokenizer, whatever ``kind`` says.
    """
    if directory is not None and (directory / BYTE_TOKENIZER_FILE).exists():
        return ByteTokenizer()
    if kind == "bytes":
        return ByteTokenizer()
    if directory is None:
        raise ValueError("a model-dir tokenizer needs the model's local directory")
    return LocalHFTokenizer(directory)
