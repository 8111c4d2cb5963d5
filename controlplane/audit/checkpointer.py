"""Signs every audit stream's head periodically, idle or not."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.audit.log import write_checkpoints
from controlplane.db.types import utcnow

log = logging.getLogger("nuri.audit")


class AuditCheckpointer:
    def __init__(
        self,
        engine: Engine,
        key: Ed25519PrivateKey,
        interval_s: float,
        leading: Callable[[], bool] | None = None,
    ) -> None:
        """``leading``: sign only while it answers True (a scheduler that leads), so that
        one process signs in any deployment; None signs always (``nuri up``)."""
        self._engine = engine
        self._leading = leading
        self.rounds = 0  # rounds run, signing or not (tests wait on it)
        self._key = key
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        with Session(self._engine) as session:
            return write_checkpoints(session, self._key, utcnow())

    def _run(self) -> None:
        while True:
            wait = self._interval
            try:
                if self._leading is None or self._leading():
                    n = self.tick()
                    log.info("signed %d audit stream head(s)", n)
                else:
                    wait = min(self._interval, 5.0)  # not leading (yet): ask again soon
            except Exception:
                log.exception("audit checkpoint failed")
            self.rounds += 1
            if self._stop.wait(wait):
                return

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="nuri-audit-checkpoints", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
