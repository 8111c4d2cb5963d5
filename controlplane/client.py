"""Python SDK for the Nuri REST API (what the CLI uses; pipelines may import it).

    from controlplane.client import NuriClient
    nuri = NuriClient("http://127.0.0.1:8000", token="nuri_...")
    job = nuri.submit_job({"kind": "lora", "model": "axk1", "gpus": 8},
                          idempotency_key="nightly-2026-11-29")
    nuri.wait(job["id"])  # or poll nuri.get_job(job["id"])

Every API error raises ``NuriAPIError`` carrying the server's ``code``, ``message`` and
``details``; connection problems raise ``NuriConnectionError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})


class NuriAPIError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class NuriConnectionError(Exception):
    pass


def _api_error(resp: httpx.Response) -> NuriAPIError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return NuriAPIError(
        resp.status_code,
        str(body.get("code", f"http_{resp.status_code}")),
        str(body.get("message", resp.reason_phrase)),
        body.get("details") or {},
    )


class NuriClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "nuri-sdk/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NuriClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=json, params=clean, headers=headers)
        except httpx.HTTPError as exc:
            raise NuriConnectionError(f"cannot reach Nuri at {self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            raise _api_error(resp)
        return resp.json() if resp.content else None

    def stream_bytes(
        self, method: str, path: str, *, params: dict[str, Any] | None = None
    ) -> Iterator[bytes]:
        """The body of a streamed response (an audit export) chunk by chunk, as it arrives;
        errors as ``request``. Lines are the caller's to split: ``iter_lines`` would also
        split at the Unicode line boundaries (U+2028, U+0085 ...) that ``str.splitlines``
        knows."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        started = False
        try:
            with self._http.stream(method, path, params=clean) as resp:
                started = True
                if resp.status_code >= 400:
                    resp.read()
                    raise _api_error(resp)
                yield from resp.iter_bytes()
        except httpx.HTTPError as exc:
            what = "lost the connection to" if started else "cannot reach"
            raise NuriConnectionError(f"{what} Nuri at {self.base_url}: {exc}") from exc

    def request_text(self, method: str, path: str, *, params: dict[str, Any] | None = None) -> str:
        """Like ``request`` for a route that answers text (a CSV export), errors alike."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, params=clean)
        except httpx.HTTPError as exc:
            raise NuriConnectionError(f"cannot reach Nuri at {self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            self.request(method, path, params=params)  # raises the API error with its body
        return resp.text

    def paginate(
        self, path: str, params: dict[str, Any] | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Follow ``next_cursor`` until exhausted (or ``limit`` items were yielded)."""
        params = dict(params or {})
        seen = 0
        while True:
            page = self.request("GET", path, params=params)
            for item in page["items"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    # --- jobs --------------------------------------------------------------------------------

    def submit_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/v1/jobs", json=spec, headers=headers)

    def list_jobs(self, **filters: Any) -> Any:
        return self.request("GET", "/v1/jobs", params=filters)

    def get_job(self, job_id: str) -> Any:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str, reason: str = "") -> Any:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel", json={"reason": reason})

    def job_events(self, job_id: str) -> Any:
        return self.request("GET", f"/v1/jobs/{job_id}/events")["items"]

    def wait(self, job_id: str, *, timeout_s: float = 3600, poll_s: float = 2.0) -> Any:
        """Poll until the job reaches a terminal status; returns the final job."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job["status"] in TERMINAL_STATUSES or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def job_logs(
        self,
        job_id: str,
        *,
        tail: int | None = None,
        attempt: int | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Log lines, oldest first: the last ``tail`` of an attempt (default: the current
        one) or, with ``after_id``, the first ``tail`` after that line's id."""
        params = {"tail": tail, "attempt": attempt, "after_id": after_id}
        return list(self.request("GET", f"/v1/jobs/{job_id}/logs", params=params)["items"])

    def follow_logs(
        self,
        job_id: str,
        *,
        attempt: int,
        after_id: int = 0,
        poll_s: float = 1.0,
        settle_s: float = 600.0,
        page: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Each log line after ``after_id`` of ``attempt`` and of every later attempt, exactly
        once and in order, as it is stored; ends once the job is finished and its workers
        are gone (a cancelled job may still log while it checkpoints), or ``settle_s`` after
        it was seen finished if they never go. Read the final status with ``get_job``."""
        cursor, finished_at = after_id, None
        while True:
            # The job first, then the lines: every line stored before this read is drained
            # below, so a finished job with no workers left has nothing more to say.
            job = self.get_job(job_id)
            while True:
                while True:
                    rows = self.job_logs(job_id, tail=page, attempt=attempt, after_id=cursor)
                    for row in rows:
                        cursor = max(cursor, int(row["id"]))
                        yield row
                    if len(rows) < page:
                        break
                if attempt >= job["attempt"]:
                    break
                attempt += 1  # a retry or a preemption: the next attempt's lines follow
            if job["status"] in TERMINAL_STATUSES:
                finished_at = finished_at if finished_at is not None else time.monotonic()
                if not job.get("assignment") or time.monotonic() - finished_at > settle_s:
                    return
            time.sleep(poll_s)

    # --- everything else ---------------------------------------------------------------------

    def whoami(self) -> Any:
        return self.request("GET", "/v1/users/me")

    def create(self, collection: str, body: dict[str, Any]) -> Any:
        return self.request("POST", f"/v1/{collection}", json=body)

    def get(self, collection: str, ref: str) -> Any:
        return self.request("GET", f"/v1/{collection}/{ref}")

    def update(self, collection: str, ref: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", f"/v1/{collection}/{ref}", json=body)

    def list(self, collection: str, **params: Any) -> Any:
        return self.request("GET", f"/v1/{collection}", params=params)
