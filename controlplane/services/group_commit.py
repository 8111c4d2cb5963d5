"""Group commit of job submissions: concurrent submissions share one transaction.

On the API's hottest write the rows are cheap; the transaction around them is not. It holds
the lock on the member's audit head until it commits, the commit is a WAL flush (an fsync on
PostgreSQL), and on SQLite every writer queues for the one database write lock, sleeping
between tries. So each submission validates on its own thread and session, then hands its
rows to ``write``. Whichever waiting thread finds no write in flight becomes the leader: it
takes everything queued (its own rows included) and writes it in one transaction: the jobs,
their first events, and each member's audit events appended in queue order under one lock
of that stream's head. The next leader takes what queued up meanwhile, so batches grow with
the load and there is no timer and no added latency when the API is idle.

Invariants:

- ``write`` returns only after the transaction holding its rows has committed (a 201 is as
  durable as before), and raises what writing them raised.
- A failed batch (an Idempotency-Key race is a unique violation) is rolled back whole and
  each submission is then written in a transaction of its own, so one bad submission fails
  alone and nothing is ever half-written.
- Each audit stream's events get contiguous sequence numbers, each chained to the one
  before, exactly as appending them one by one would; streams are locked in sorted order.

Per process: API replicas each group their own submissions, and the audit head's row lock
(PostgreSQL) or the database write lock (SQLite) orders their batches.
"""

from __future__ import annotations

import threading
import weakref
from _thread import LockType
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection, Engine

from controlplane.audit import log as audit_log
from controlplane.db.models import Job, JobEvent

# Enough to amortise a commit many times over, small enough to keep one transaction short.
MAX_BATCH = 256

_INSERT_JOB = insert(Job)
_INSERT_EVENT = insert(JobEvent)


def _new_held_lock() -> LockType:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False, slots=True)
class Pending:
    """One submission's rows: the job, its first event and its audit entry (see
    ``audit_log.entry``), plus how writing them ended."""

    job: dict[str, Any]
    event: dict[str, Any]
    audit: dict[str, Any]
    done: bool = False
    committed: bool = False
    error: BaseException | None = None
    # Held until the submitter is woken: its rows are written, or it is to lead the next batch.
    wake: LockType = field(default_factory=_new_held_lock)


def insert_rows(conn: Connection, batch: list[Pending]) -> None:
    """Insert a batch's rows in the connection's transaction (the caller commits).

    Audit last: the stream's head stays locked from its first append until the commit.
    """
    conn.execute(_INSERT_JOB, [p.job for p in batch])
    conn.execute(_INSERT_EVENT, [p.event for p in batch])
    streams: dict[str, list[dict[str, Any]]] = {}
    for p in batch:
        streams.setdefault(p.audit["stream"], []).append(p.audit)
    for stream in sorted(streams):
        audit_log.append(conn, stream, streams[stream])


class SubmissionWriter:
    """Leader/follower group commit for one engine (see the module docstring).

    Each follower sleeps on its own lock: the leader wakes exactly the submitters whose rows
    it committed, and hands the lead to the oldest one still queued, if any.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Pending] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Submissions waiting for the next batch (not counting one being written)."""
        with self._lock:
            return len(self._queue)

    def write(self, engine: Engine, item: Pending) -> None:
        """Commit ``item``'s rows, alone or with others queued at the same time."""
        with self._lock:
            self._queue.append(item)
            lead = not self._writing
            self._writing = True
        if not lead:
            item.wake.acquire()  # done, or handed the lead
        while not item.done:
            with self._lock:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
            try:
                self._commit(engine, batch)
            except BaseException as exc:
                for p in batch:
                    if not p.committed and p.error is None:
                        p.error = exc
                raise
            finally:
                with self._lock:
                    for p in batch:
                        p.done = True
                    successor = self._queue[0] if item.done and self._queue else None
                    self._writing = not item.done or successor is not None
                for p in batch:
                    if p is not item:
                        p.wake.release()
                if successor is not None:
                    successor.wake.release()
        if item.error is not None:
            raise item.error

    @staticmethod
    def _commit(engine: Engine, batch: list[Pending]) -> None:
        try:
            with engine.begin() as conn:
                insert_rows(conn, batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
        else:
            for p in batch:
                p.committed = True
            return
        # Which one failed is unknown (and the others may be fine): one transaction each.
        for p in batch:
            try:
                with engine.begin() as conn:
                    insert_rows(conn, [p])
            except Exception as exc:
                p.error = exc
            else:
                p.committed = True


_lock = threading.Lock()
_writers: weakref.WeakKeyDictionary[Engine, SubmissionWriter] = weakref.WeakKeyDictionary()


def writer_for(engine: Engine) -> SubmissionWriter:
    """The engine's writer in this process (one per engine, made on first use)."""
    with _lock:
        writer = _writers.get(engine)
        if writer is None:
            writer = _writers[engine] = SubmissionWriter()
        return writer


def write(engine: Engine, item: Pending) -> None:
    """Commit one submission's rows through the engine's writer (see ``SubmissionWriter``)."""
    writer_for(engine).write(engine, item)
