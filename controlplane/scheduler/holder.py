"""A scheduler's lease holder name that survives its restart.

A scheduler killed while leading leaves the lease held under its name until the lease
expires. Restarted with the same name it takes the lease back at once (``lease.acquire``
renews a lease its holder still has) instead of waiting out its own lease. The name is kept
in ``<home>/scheduler-holder``, and the file is locked (``flock``) for the life of the
process: a second scheduler on the same home, alive at the same time, cannot claim the name
(it gets a fresh one, and the fencing token keeps the two apart as it would any two holders).
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from pathlib import Path

FILE = "scheduler-holder"
_held: list[int] = []  # the locked files' descriptors, open until the process ends


def fresh() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def claim(home: Path) -> str:
    """The holder name kept under ``home`` (created on first use), locked for this process;
    a fresh, unsaved name when another live process holds it or the home is not writable."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return fresh()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return fresh()
    name = os.read(fd, 200).decode("utf-8", "replace").strip()
    if not name or len(name) > 120 or not name.isprintable():
        name = fresh()
        os.ftruncate(fd, 0)
        os.pwrite(fd, name.encode(), 0)
        os.fsync(fd)
    _held.append(fd)
    return name


def release_all() -> None:
    """Unlock every claimed name (for tests that restart a scheduler in one process)."""
    while _held:
        os.close(_held.pop())
