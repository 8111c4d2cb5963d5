"""The job's report channel: metrics, checkpoints, artifacts and status, as JSON events.

Every event is a flat dict with a ``type`` (``metrics``, ``checkpoint``, ``artifact``,
``status``), the ``job_id`` and a wall-clock ``ts``. Only rank 0 reports. A :class:`Reporter`
must never take a job down: the HTTP one retries briefly and then drops the event (the JSONL
file next to the outputs keeps the full record).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a job's events go."""

    def report(self, event: dict[str, Any]) -> None:
        """Deliver one event (best effort; must not raise)."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


class NullReporter:
    """Drops every event (non-zero ranks, or ``report.kind = none``)."""

    def report(self, event: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


class JsonlReporter:
    """Appends one JSON object per line to a file, flushed per event."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def report(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class HttpReporter:
    """Posts each event to ``POST {base_url}/v1/jobs/{job_id}/report`` with a bearer token."""

    def __init__(
        self,
        base_url: str,
        job_id: str,
        token: str | None = None,
        client: Any = None,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=base_url, headers=headers, timeout=10.0)
        if client is not None and token:
            self._client.headers.update(headers)
        self._path = f"/v1/jobs/{job_id}/report"
        self._retries = retries
        self._backoff_s = backoff_s
        self.dropped = 0

    def report(self, event: dict[str, Any]) -> None:
        import httpx

        for attempt in range(self._retries):
            try:
                response = self._client.post(self._path, json=event)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        # A 4xx will not get better by retrying (e.g. the job was cancelled).
                        log.warning("report rejected: %s %s", response.status_code, response.text)
                        self.dropped += 1
                    return
            except httpx.HTTPError as exc:
                log.warning("report failed (attempt %d): %s", attempt + 1, exc)
            time.sleep(self._backoff_s * (2**attempt))
        self.dropped += 1

    def close(self) -> None:
        self._client.close()


class CallbackReporter:
    """Hands each event to a callable (e.g. a Ray supervisor's in-memory event buffer)."""

    def __init__(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.callback = callback

    def report(self, event: dict[str, Any]) -> None:
        try:
            self.callback(event)
        except Exception:  # the report channel must never take the job down
            log.exception("report callback failed")

    def close(self) -> None:
        return None


class FanoutReporter:
    """Sends each event to several reporters (e.g. the JSONL file and the control plane)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def report(self, event: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.report(event)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


class JobEvents:
    """Stamps events with the job id and time before handing them to a :class:`Reporter`."""

    def __init__(self, job_id: str, reporter: Reporter) -> None:
        self.job_id = job_id
        self.reporter = reporter

    def emit(self, type_: str, **fields: Any) -> None:
        """Report one event of ``type_`` with ``fields``."""
        self.reporter.report({"type": type_, "job_id": self.job_id, "ts": time.time(), **fields})


def reporter_for(spec: Any, rank: int) -> Reporter:
    """The reporter a spec asks for (always a JSONL file as well, on rank 0)."""
    if rank != 0 or spec.report.kind == "none":
        return NullReporter()
    path = spec.report.path or str(Path(spec.output_dir) / "events.jsonl")
    file_reporter = JsonlReporter(path)
    if spec.report.kind == "http":
        token = os.environ.get(spec.report.token_env)
        return FanoutReporter(file_reporter, HttpReporter(spec.report.url, spec.job_id, token))
    return file_reporter
