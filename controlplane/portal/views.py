"""Rendering helpers of the portal: templates, formats, the loss curve, the submit form.

Nothing here reads the database or decides anything; ``routes`` does both through the
services and passes plain values in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from controlplane.db.models import JobKind
from controlplane.errors import NuriError
from controlplane.jobstate import TERMINAL, JobStatus
from controlplane.numerals import ascii_int, finite_float
from controlplane.portal import i18n

# web/ sits beside the packages (the fixed top level): templates and static assets.
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
templates = Jinja2Templates(directory=WEB_DIR / "templates")

ACTIVE = ("QUEUED", "ADMITTED", "RUNNING", "PREEMPTING")
FINISHED = tuple(s.value for s in TERMINAL)


def when(value: datetime | None) -> str:
    """A timestamp as operators read it: UTC, to the second."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def day(value: datetime | None) -> str:
    return when(value)[:10] if value is not None else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h"


def terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL


# A short title for each reason code of the engine (``quotas.decisions``), shown before its
# message and translated; the message itself (what was needed, what was there) is the
# engine's and stays English.
REASON_TITLES = {
    "invalid_request": "The request cannot run as written",
    "no_allowed_pool": "No pool may take it",
    "shape_unsatisfiable": "No node shape fits it",
    "placement_paused": "The cluster is not taking work right now",
    "waiting_for_preemption": "Room is being made for it",
    "budget_exhausted": "Out of GPU-hour budget",
    "non_preemptible_over_nominal": "Over its guaranteed share",
    "quota_exceeded": "Over its member's quota",
    "cohort_exhausted": "Nothing left to borrow",
    "insufficient_capacity": "Not enough free GPUs",
    "fragmented": "Free GPUs are too scattered",
    "reserved_for_head": "GPUs held for the job at the head of the queue",
    "blocked_by_head": "Behind the job at the head of the queue",
    "queue_position": "Waiting its turn",
}


def reason_title(code: str) -> str:
    """The English title of a reason code (its code for one this list does not know)."""
    return REASON_TITLES.get(code, code)


templates.env.filters["when"] = when
templates.env.filters["reason_title"] = reason_title
templates.env.filters["duration"] = duration
templates.env.filters["day"] = day
templates.env.tests["terminal"] = terminal
# The viewer's language and time zone: gettext in templates and the ``localtime`` filter.
i18n.install(templates.env)
templates.context_processors.append(i18n.context_of)


@dataclass(slots=True)
class SubmitForm:
    """The submit form's fields as the user typed them (re-shown after an error)."""

    kind: str = "lora"
    model: str = "axk1-tiny"
    name: str = ""
    # One GPU: the default runs the real tiny model, one rank, in a minute on a CPU machine.
    gpus: str = "1"
    teacher: str = ""
    steps: str = ""
    allowed_pools: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    priority_class: str = "research"
    max_runtime_h: str = "24"
    preemptible: str = "default"  # default | yes | no

    @classmethod
    def parse(cls, pairs: list[tuple[str, str]]) -> SubmitForm:
        form = cls(allowed_pools=[], inputs=[])
        for key, value in pairs:
            if key in ("allowed_pools", "inputs"):
                getattr(form, key).append(value)
            elif key in (
                "kind",
                "model",
                "name",
                "gpus",
                "priority_class",
                "max_runtime_h",
                "teacher",
                "steps",
            ):
                setattr(form, key, value.strip())
            elif key == "preemptible":
                form.preemptible = value
        return form

    def to_request(self) -> dict[str, Any]:
        """The REST body this form stands for; numbers that do not parse are passed on as
        text, so validation reports them exactly as it would for the API."""
        body: dict[str, Any] = {
            "kind": self.kind,
            "model": self.model,
            "gpus": number(self.gpus),
            "allowed_pools": self.allowed_pools,
            "inputs": self.inputs,
            "priority_class": self.priority_class,
            "max_runtime_s": _hours_to_seconds(self.max_runtime_h),
        }
        if self.name:
            body["name"] = self.name
        if self.teacher:
            body["teacher"] = self.teacher
        if self.steps:
            # Only the kind's knobs: a synthetic or unknown setting is refused as on the API.
            key = "max_new_tokens" if self.kind == "inference" else "steps"
            body["config"] = {key: number(self.steps)}
        if self.preemptible in ("yes", "no"):
            body["preemptible"] = self.preemptible == "yes"
        return body


def number(text: str) -> int | str:
    """A form's integer field for validation: the integer, or the text when it is not one in
    ASCII digits (a superscript, Arabic-Indic digits), which validation refuses as the API
    does."""
    value = ascii_int(text)
    return text if value is None else value


def _hours_to_seconds(text: str) -> int | str:
    # Hours so large that their seconds are infinite stay text, refused like ``inf``.
    hours = finite_float(text)
    seconds = math.inf if hours is None else hours * 3600
    return round(seconds) if math.isfinite(seconds) else text


# What a field checked against a pattern expects, in words: pydantic's message quotes the
# regex, which tells a person nothing. Keyed by the patterns of ``api.schemas`` (a test checks
# that every one of them is here); one not listed reads as "is not in the expected form".
PATTERN_WORDS = {
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": (
        "a name: lowercase letters, digits and dashes, up to 63 characters, starting and "
        "ending with a letter or digit"
    ),
    r"^[0-9]{4}-(Q[1-4]|H[12]|[0-9]{2})$": "a period such as 2026-Q4, 2026-H1 or 2026-11",
    r"^[a-z0-9-]{2,40}$": "2 to 40 lowercase letters, digits and dashes (such as kr-seoul)",
    r"^[A-Z]{2}$": "a two-letter country code in capitals (such as KR)",
    r"^[a-z_]{2,40}$": "2 to 40 lowercase letters and underscores",
    r"^[^@\s]+@[^@\s]+\.[^@\s]+$": "an email address (such as name@example.org)",
    r"^[a-z0-9][a-z0-9.-]{0,99}$": (
        "a name: lowercase letters, digits, dots and dashes, up to 100 characters, starting "
        "with a letter or digit"
    ),
    r"^(data|model)$": "data or model",
}

# Keys of a residency refusal's details that ``refusal_of`` shows as a list, not as text.
_REFUSAL_KEYS = ("pools", "policy_set_hash")


def problem_of(error: Mapping[str, Any]) -> str:
    """One validation error as a line: where, then what is expected (never a regex)."""
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
    if error.get("type") == "string_pattern_mismatch":
        # The API's error bodies keep only the message, which quotes the pattern.
        quoted = re.fullmatch(r"String should match pattern '(.*)'", str(error.get("msg", "")))
        pattern = (error.get("ctx") or {}).get("pattern") or (quoted and quoted.group(1))
        expected = PATTERN_WORDS.get(str(pattern))
        return (
            f"{where}: should be {expected}"
            if expected
            else f"{where}: is not in the expected form"
        )
    return f"{where}: {error.get('msg', 'is not valid')}"


def plain(value: Any) -> str:
    """A detail's value as text for people: lists joined, mappings as ``key: value``."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain(v)}" for k, v in sorted(value.items(), key=str))
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return ", ".join(plain(v) for v in items) or "none"
    return str(value)


def problems_of(exc: ValidationError | NuriError) -> list[str]:
    """What the user must fix, in the words the API would use (a residency refusal's pools
    are left to ``refusal_of``)."""
    if isinstance(exc, NuriError):
        shown = refusal_of(exc) is not None
        return [exc.message] + [
            f"{k}: {plain(v)}"
            for k, v in sorted(exc.details.items())
            if not (shown and k in _REFUSAL_KEYS)
        ]
    return [problem_of(e) for e in exc.errors()]


@dataclass(frozen=True, slots=True)
class PoolVerdict:
    """One pool of a residency refusal: allowed or not, and the rules that decided it."""

    pool: str
    allowed: bool
    rules: list[str]
    reasons: list[str]
    errors: list[str]


def refusal_of(exc: ValidationError | NuriError) -> list[PoolVerdict] | None:
    """The pools of a residency refusal, for ``_refusal.html``; None for any other error."""
    return refusal_in(exc.details) if isinstance(exc, NuriError) else None


def refusal_in(details: Mapping[str, Any]) -> list[PoolVerdict] | None:
    """``details.pools`` of a refusal (``residency.denial_details``) pool by pool, or None."""
    pools = details.get("pools")
    if not isinstance(pools, Mapping) or not all(isinstance(d, Mapping) for d in pools.values()):
        return None
    return [
        PoolVerdict(
            str(name),
            bool(d.get("allowed")),
            [str(r) for r in d.get("policy_ids") or ()],
            [str(r) for r in d.get("reasons") or ()],
            [str(r) for r in d.get("errors") or ()],
        )
        for name, d in sorted(pools.items())
    ]


@dataclass(frozen=True, slots=True)
class ErrorFacts:
    """What an error page says: the message, its details as lines, a refusal's pools."""

    message: str
    lines: list[str]
    refused: list[PoolVerdict] | None


def error_facts(code: str, message: str, details: Mapping[str, Any]) -> ErrorFacts:
    """An error page's text: the message (a validation error's in words), its details as
    lines, and a residency refusal's pools; never a dict or a regex."""
    errors = details.get("errors") if code == "validation_error" else None
    if isinstance(errors, list) and errors and all(isinstance(e, Mapping) for e in errors):
        lines = [problem_of(e) for e in errors]
        return ErrorFacts(lines[0], lines[1:], None)
    refused = refusal_in(details)
    lines = [
        f"{k}: {plain(v)}"
        for k, v in sorted(details.items())
        if not (refused is not None and k in _REFUSAL_KEYS)
    ]
    return ErrorFacts(message, lines, refused)


def status_of(exc: ValidationError | NuriError) -> int:
    return exc.status_code if isinstance(exc, NuriError) else 422


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as (name, value) pairs, in order."""
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def job_kinds() -> list[str]:
    return [k.value for k in JobKind]
