"""What a member may ask a replica: the request schema, its errors, the answer pieces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from workers.knobs import ADAPTER_NAME
from workers.tokenizer import ChatError, check_messages

MAX_STOPS = 4
MAX_STOP_CHARS = 64
MAX_TOKENS_LIMIT = 131_072
MAX_PROMPT_CHARS = 4_000_000  # the gateway's body limit comes first; this guards the tokenizer
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
REQUEST_KEYS = (
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "adapter",
)


class RequestInvalid(ValueError):
    """A request the replica refuses; ``code`` is stable (the gateway answers 400 with it).

    Codes: ``invalid_request``, ``context_length_exceeded``, ``unknown_adapter``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray as itself, code included
        return (type(self), (self.code, self.message))


def invalid_request(message: str) -> RequestInvalid:
    """A :class:`RequestInvalid` with code ``invalid_request``."""
    return RequestInvalid("invalid_request", message)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid_request(f"'{name}' must be a number")
    if not low <= value <= high:
        raise invalid_request(f"'{name}' must be between {low} and {high}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(f"'{name}' must be an integer")
    if not low <= value <= high:
        raise invalid_request(f"'{name}' must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a chat (``messages``) or a completion (``prompt``), exactly one."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise invalid_request("give exactly one of 'messages' and 'prompt'")
        if self.messages is not None:
            try:
                object.__setattr__(self, "messages", check_messages(self.messages))
            except ChatError as exc:
                raise invalid_request(str(exc)) from None
            if sum(len(m["content"]) for m in self.messages) > MAX_PROMPT_CHARS:
                raise invalid_request("the messages are too long")
        elif not isinstance(self.prompt, str):
            raise invalid_request("'prompt' must be a string")
        elif len(self.prompt) > MAX_PROMPT_CHARS:
            raise invalid_request("the prompt is too long")
        if self.max_tokens is not None:
            _integer(self.max_tokens, "max_tokens", 1, MAX_TOKENS_LIMIT)
        object.__setattr__(
            self, "temperature", _number(self.temperature, "temperature", 0.0, MAX_TEMPERATURE)
        )
        object.__setattr__(self, "top_p", _number(self.top_p, "top_p", 0.0, 1.0))
        if self.top_p <= 0:
            raise invalid_request("'top_p' must be above 0")
        if self.seed is not None:
            _integer(self.seed, "seed", 0, MAX_SEED)
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOPS:
            raise invalid_request(f"'stop' holds at most {MAX_STOPS} strings")
        for s in self.stop:
            if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
                raise invalid_request(f"each stop string must be 1 to {MAX_STOP_CHARS} characters")
        if self.adapter is not None and (
            not isinstance(self.adapter, str) or not ADAPTER_NAME.fullmatch(self.adapter)
        ):
            raise invalid_request(f"'adapter' must match {ADAPTER_NAME.pattern}")

    @classmethod
    def from_dict(cls, raw: Any) -> GenerationRequest:
        """Validate a request body; raise :class:`RequestInvalid` for anything else."""
        if not isinstance(raw, dict):
            raise invalid_request("a request must be an object")
        unknown = sorted(str(k)[:40] for k in raw if k not in REQUEST_KEYS)
        if unknown:
            raise invalid_request(f"unknown request field(s) {', '.join(unknown)}")
        stop = raw.get("stop")
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, list | tuple):
            stop = tuple(stop)
        else:
            raise invalid_request("'stop' must be a string or a list of strings")
        return cls(
            messages=raw.get("messages"),
            prompt=raw.get("prompt"),
            max_tokens=raw.get("max_tokens"),
            temperature=raw.get("temperature", 0.0),
            top_p=raw.get("top_p", 1.0),
            seed=raw.get("seed"),
            stop=stop,
            adapter=raw.get("adapter") or None,
        )


@dataclass(frozen=True, slots=True)
class Delta:
    """New text since the previous delta; ``finish_reason`` only on the last one."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # so far
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }
