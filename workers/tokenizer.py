"""Tokenizers the job payloads use, behind one small protocol.

Tiny and mini presets use :class:`ByteTokenizer` (UTF-8 bytes plus a handful of special
tokens) so a CPU run needs no download. Real models load the tokenizer that ships in the
model's local directory through transformers, never from a hub.

Teacher and student must share a vocabulary for logit distillation; every byte-level preset
has the same ``vocab_size`` (``ByteTokenizer.vocab_size``) so any tiny teacher distils into
any tiny student.

Chat: :meth:`Tokenizer.chat` renders a conversation (``system`` / ``user`` / ``assistant``
messages) and says which tokens are the assistant's (the training targets);
:meth:`Tokenizer.chat_prompt` renders a prompt that ends where the assistant starts to write;
:meth:`Tokenizer.generation_prompt` does the same for a multi-turn conversation (serving).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Written next to a saved byte-level model so a later job reloads the same tokenizer.
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"

ROLES = ("system", "user", "assistant")


class ChatError(ValueError):
    """A conversation that cannot be rendered (bad roles or contents, no assistant turn)."""


def check_messages(messages: Any) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or :class:`ChatError`."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list")
    out = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatError(f"message {n}: needs a role out of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ChatError(f"message {n}: 'content' must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def with_system(messages: Sequence[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """``messages`` with ``system`` as a leading system turn unless they have one already."""
    if system is None or any(m["role"] == "system" for m in messages):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


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

    def chat_prompt(self, prompt: str, think: bool, system: str | None = None) -> list[int]:
        """Ids of a single-turn chat prompt ending where the assistant starts to write.

        ``think=False`` selects non-thinking mode (an empty reasoning block is pre-filled);
        ``system`` is an optional system turn before the user's.
        """
        ...

    def chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        """Ids of a whole conversation and, per id, whether it is a target (assistant text,
        its end-of-turn included). Raises :class:`ChatError` for a malformed one."""
        ...

    def generation_prompt(self, messages: list[dict[str, str]], think: bool = False) -> list[int]:
        """Ids of a multi-turn conversation ending where the assistant's next turn starts.

        For one user message (after an optional system one) these are exactly
        :meth:`chat_prompt`'s ids. Raises :class:`ChatError` for a malformed conversation.
        """
        ...

    def save(self, directory: Path) -> None:
        """Write what a later job needs to load this tokenizer from ``directory``."""
        ...


class ByteTokenizer:
    """UTF-8 bytes shifted past eight special tokens; vocabulary of 264.

    The system-turn marker takes the slot of byte 0xF8, which never occurs in UTF-8, so the
    vocabulary (and every model saved with it) stays the same.

    Chat template (deterministic; ``<think></think>`` pre-fills an empty reasoning block)::

        <s> [<|system|> system text] <|user|> user text <|assistant|><think></think> reply </s>
            <|user|> ... <|assistant|><think></think> reply </s>

    Only the replies and their ``</s>`` are targets.
    """

    SPECIALS = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<think>", "</think>", "<unk>")
    OFFSET = len(SPECIALS)
    # Markers in byte slots UTF-8 never uses (0xC0, 0xC1 and 0xF5-0xFF are invalid leads).
    EXTRA_SPECIALS = {OFFSET + 0xF8: "<|system|>"}

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

    @property
    def system_id(self) -> int:
        return self.OFFSET + 0xF8

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(
            i - self.OFFSET
            for i in ids
            if self.OFFSET <= i < self.vocab_size and i not in self.EXTRA_SPECIALS
        )
        # A generated sequence can stop in the middle of a multi-byte character.
        return data.decode("utf-8", errors="replace")

    def decode_with_specials(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens rendered by name (used to split reasoning)."""
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if 0 <= i < self.OFFSET or i in self.EXTRA_SPECIALS:
                parts.append(self.decode(run))
                run = []
                parts.append(self.SPECIALS[i] if i < self.OFFSET else self.EXTRA_SPECIALS[i])
            else:
                run.append(i)
        parts.append(self.decode(run))
        return "".join(parts)

    def _turn(self, role: str, content: str) -> list[int]:
        marker = {"system": self.system_id, "user": self.user_id}[role]
        return [marker, *self.encode(content)]

    def chat_prompt(self, prompt: str, think: bool, system: str | None = None) -> list[int]:
        ids = [self.bos_id]
        if system is not None:
            ids += self._turn("system", system)
        ids += [*self._turn("user", prompt), self.assistant_id, self.think_id]
        if not think:
            ids.append(self.end_think_id)
        return ids

    def chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        ids, target = [self.bos_id], [False]
        for m in check_messages(messages):
            if m["role"] == "assistant":
                head = [self.assistant_id, self.think_id, self.end_think_id]
                body = [*self.encode(m["content"]), self.eos_id]
                ids += head + body
                target += [False] * len(head) + [True] * len(body)
            else:
                turn = self._turn(m["role"], m["content"])
                ids += turn
                target += [False] * len(turn)
        if not any(target):
            raise ChatError("a conversation to train on needs an assistant turn")
        return ids, target

    def generation_prompt(self, messages: list[dict[str, str]], think: bool = False) -> list[int]:
        ids = [self.bos_id]
        for m in check_messages(messages):
            if m["role"] == "assistant":
                ids += [self.assistant_id, self.think_id, self.end_think_id]
                ids += [*self.encode(m["content"]), self.eos_id]
            else:
                ids += self._turn(m["role"], m["content"])
        ids += [self.assistant_id, self.think_id]
        if not think:
            ids.append(self.end_think_id)
        return ids

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "kind": "bytes",
            "specials": list(self.SPECIALS),
            "extra_specials": {str(k): v for k, v in self.EXTRA_SPECIALS.items()},
            "vocab_size": self.vocab_size,
        }
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

    def _render(self, messages: list[dict[str, str]], generation: bool, think: bool) -> str:
        # Templates name the switch differently; unknown keywords are ignored by Jinja.
        text = self._tok.apply_chat_template(
            messages,
            add_generation_prompt=generation,
            tokenize=False,
            enable_thinking=think,
            thinking=think,
        )
        return str(text)

    def chat_prompt(self, prompt: str, think: bool, system: str | None = None) -> list[int]:
        messages = with_system([{"role": "user", "content": prompt}], system)
        if getattr(self._tok, "chat_template", None):
            text = self._render(messages, generation=True, think=think)
            return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]
        head = f"{system}\n\n" if system is not None else ""
        return [self.bos_id, *self.encode(head + prompt)]

    def generation_prompt(self, messages: list[dict[str, str]], think: bool = False) -> list[int]:
        messages = check_messages(messages)
        if getattr(self._tok, "chat_template", None):
            text = self._render(messages, generation=True, think=think)
            return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]
        # No template: the turns' texts in order, as chat_prompt joins a system and a prompt.
        return [self.bos_id, *self.encode("\n\n".join(m["content"] for m in messages))]

    def chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        """Through the model's own chat template (``apply_chat_template``).

        An assistant turn is a target when the template renders the conversation up to it
        as a prefix of the whole one (the usual case); a template that rewrites earlier
        turns (one that drops their reasoning, say) leaves those turns out of the targets.
        """
        messages = check_messages(messages)
        if not getattr(self._tok, "chat_template", None):
            raise ChatError("the model's tokenizer has no chat template for 'messages' records")
        full = self._render(messages, generation=False, think=False)
        pieces: list[tuple[str, bool]] = []
        pos = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(messages[:i], generation=True, think=False) if i else ""
            through = self._render(messages[: i + 1], generation=False, think=False)
            if pos <= len(before) and through.startswith(before) and full.startswith(through):
                pieces += [(full[pos : len(before)], False), (through[len(before) :], True)]
                pos = len(through)
        pieces.append((full[pos:], False))
        ids: list[int] = []
        target: list[bool] = []
        for text, is_target in pieces:
            part = self.encode(text) if text else []
            ids += part
            target += [is_target] * len(part)
        if not any(target):
            raise ChatError("no assistant turn of the conversation is a target")
        return ids, target

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
