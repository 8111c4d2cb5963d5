"""Where checkpoints lie on disk, readable without torch (the control plane reads it).

A checkpoint is a directory ``<checkpoint_dir>/step-<n>/``; ``<checkpoint_dir>/latest`` names
the newest complete one and is written last (see :mod:`workers.checkpoint`). The synthetic
payload keeps one ``rank<r>.json`` per rank instead (:mod:`workers.synthetic`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LATEST = "latest"
_TAG = re.compile(r"step-(\d+)")


def tag_for(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"step-{step}"


def latest_tag(checkpoint_dir: Path) -> str | None:
    """Tag of the newest complete checkpoint, or None."""
    pointer = checkpoint_dir / LATEST
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    return tag if (checkpoint_dir / tag).is_dir() else None


def checkpoint_tags(checkpoint_dir: Path) -> list[str]:
    """The ``step-<n>`` checkpoint directories under ``checkpoint_dir``, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name)
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and (m := _TAG.fullmatch(p.name))
    ]
    return [name for _, name in sorted(found)]


def mark_latest(checkpoint_dir: Path, tag: str) -> None:
    """Atomically point ``latest`` at ``tag`` (after the checkpoint is fully written)."""
    tmp = checkpoint_dir / f".{LATEST}.tmp"
    tmp.write_text(tag)
    tmp.replace(checkpoint_dir / LATEST)


@dataclass(frozen=True, slots=True)
class Found:
    """The newest complete checkpoint of a job's checkpoint directory."""

    uri: str
    step: int
    at: datetime


def newest(checkpoint_dir: Path) -> Found | None:
    """The newest complete checkpoint in either layout, or None (nothing, or unreadable)."""
    try:
        tag = latest_tag(checkpoint_dir)
        if tag is not None:
            path = checkpoint_dir / tag
            match = _TAG.fullmatch(tag)
            step = int(match.group(1)) if match else 0
            return Found(str(path), step, datetime.fromtimestamp(path.stat().st_mtime, UTC))
        rank0 = checkpoint_dir / "rank0.json"
        if rank0.is_file():
            saved = json.loads(rank0.read_text())
            at = datetime.fromtimestamp(float(saved.get("at", rank0.stat().st_mtime)), UTC)
            return Found(str(checkpoint_dir), int(saved["step"]), at)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None
