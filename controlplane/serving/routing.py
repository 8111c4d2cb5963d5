"""Finding a replica for a gateway request, and talking to it.

A replica is a RUNNING job of kind ``serve`` of the endpoint, in a pool, whose Ray Serve
application is :func:`~controlplane.serving.names.replica_app_name`. A request may only go to
a replica whose pool the residency policy allows for the endpoint's model right now
(``residency.placement``, the check the scheduler makes for running jobs): with replicas
running but none allowed, the request fails closed (403 naming the rules). Among the allowed
ones, the replica with the fewest requests in flight from this process wins (ties: job id).

With no replica running (scaled to zero, or not started yet) the request waits for a cold
start: its open reservation is the demand the endpoint controller reads; the wait polls the
database and is bounded by the endpoint's ``cold_start_timeout_s`` (then 503 + Retry-After).

The Ray side sits behind :class:`ReplicaBackend` (:class:`RayServeBackend` in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlmodel import Session, col, select

from controlplane import residency
from controlplane.db.models import Endpoint, Job
from controlplane.errors import NuriError
from controlplane.serving.names import SERVE_KIND, replica_app_name
from policies import Decision

# Codes of ``workers.serving.RequestInvalid`` the gateway answers as 400.
REQUEST_INVALID_CODES = frozenset({"context_length_exceeded", "invalid_request", "unknown_adapter"})


@dataclass(frozen=True, slots=True)
class Replica:
    job_id: str
    attempt: int
    pool: str

    @property
    def app_name(self) -> str:
        return replica_app_name(self.job_id, self.attempt)


@dataclass(frozen=True, slots=True)
class Candidates:
    """The endpoint's running replicas split by what residency says of their pools."""

    eligible: tuple[Replica, ...]
    denied: dict[str, Decision] = field(default_factory=dict)  # pool -> the denial

    @property
    def running(self) -> bool:
        return bool(self.eligible or self.denied)


class ResidencyBlocked(NuriError):
    """Replicas run, but none in a pool the policy allows for the model now (fail closed)."""

    status_code = 403
    code = "residency_denied"


class NoReplicaReady(NuriError):
    """No replica became ready within the endpoint's cold-start bound."""

    status_code = 503
    code = "no_replica_ready"

    def __init__(self, message: str, retry_after: int, details: dict[str, Any]) -> None:
        super().__init__(message, details={**details, "retry_after_s": retry_after})
        self.retry_after = retry_after


class ReplicaRefused(NuriError):
    """The replica refused the request (``workers.serving.RequestInvalid``): a 400."""

    status_code = 400


class ReplicaFailed(Exception):
    """The replica could not answer (its actor died, its application is gone)."""


class ReplicaUnavailable(ReplicaFailed):
    """The replica's application cannot be reached yet (or any more): not ready, not a try."""


class ClientGone(Exception):
    """The client disconnected while the request was waiting."""


def candidates(session: Session, endpoint: Endpoint) -> Candidates:
    """The endpoint's RUNNING replicas and, per pool, whether residency allows it now."""
    jobs = session.exec(
        select(Job).where(
            Job.endpoint_id == endpoint.id,
            Job.kind == SERVE_KIND,
            Job.status == "RUNNING",
            col(Job.pool).is_not(None),
        )
    ).all()
    decisions: dict[str, Decision] = {}
    eligible: list[Replica] = []
    for job in sorted(jobs, key=lambda j: j.id):
        assert job.pool is not None  # filtered above; for the type checker
        if job.pool not in decisions:
            decisions[job.pool] = residency.placement(session, job, job.pool)
        if decisions[job.pool].allowed:
            eligible.append(Replica(job.id, job.attempt, job.pool))
    denied = {p: d for p, d in decisions.items() if not d.allowed}
    return Candidates(tuple(eligible), denied)


def residency_refusal(endpoint: Endpoint, denied: dict[str, Decision]) -> ResidencyBlocked:
    rules = sorted({r for d in denied.values() for r in d.policy_ids})
    reasons = sorted({r for d in denied.values() for r in d.reasons})
    named = ", ".join(rules) if rules else "no rule permits it"
    return ResidencyBlocked(
        f"residency: no replica of {endpoint.name!r} runs in a pool its model may be processed "
        f"in now (denied by {named}): {'; '.join(reasons)}"[:1000],
        details={"rules": rules, "pools": sorted(denied), "reasons": reasons},
    )


class InFlight:
    """Requests this process has in flight per replica (job id): the least-loaded choice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def pick(self, replicas: tuple[Replica, ...], exclude: frozenset[str]) -> Replica | None:
        usable = [r for r in replicas if r.job_id not in exclude]
        if not usable:
            return None
        with self._lock:
            return min(usable, key=lambda r: (self._counts.get(r.job_id, 0), r.job_id))

    def acquire(self, replica: Replica) -> None:
        with self._lock:
            self._counts[replica.job_id] = self._counts.get(replica.job_id, 0) + 1

    def release(self, replica: Replica) -> None:
        with self._lock:
            left = self._counts.get(replica.job_id, 0) - 1
            if left > 0:
                self._counts[replica.job_id] = left
            else:
                self._counts.pop(replica.job_id, None)

    def count(self, job_id: str) -> int:
        with self._lock:
            return self._counts.get(job_id, 0)


R = TypeVar("R")


async def route(
    load: Callable[[], Awaitable[Candidates]],
    call: Callable[[Replica], Awaitable[R]],
    inflight: InFlight,
    *,
    endpoint: Endpoint,
    timeout_s: float,
    gone: Callable[[], Awaitable[bool]],
    on_cold_start: Callable[[], Awaitable[None]],
    poll_s: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Replica, R]:
    """Run ``call`` on the least-loaded eligible replica; the replica is counted in flight
    until the caller calls ``inflight.release`` on it (a stream outlives this call).

    - none running: ``on_cold_start()`` once, then poll ``load`` every ``poll_s`` (a replica
      whose application is not deployed yet counts as not ready) up to ``timeout_s`` from
      the start: :class:`NoReplicaReady`; :class:`ClientGone` as soon as ``gone()``;
    - running but none eligible: :class:`ResidencyBlocked` naming the rules;
    - a replica that fails (:class:`ReplicaFailed`) is tried again once, on another replica
      (``call`` must not have delivered anything to the client yet).
    """
    deadline = clock() + timeout_s
    cold = False
    failed: set[str] = set()
    unready: set[str] = set()
    while True:
        found = await load()
        if found.running and not found.eligible:
            raise residency_refusal(endpoint, found.denied)
        replica = inflight.pick(found.eligible, frozenset(failed | unready))
        if replica is not None:
            inflight.acquire(replica)
            try:
                return replica, await call(replica)
            except ReplicaUnavailable:
                unready.add(replica.job_id)
                inflight.release(replica)
                continue
            except ReplicaFailed:
                inflight.release(replica)
                failed.add(replica.job_id)
                if len(failed) > 1:
                    raise NoReplicaReady(
                        "the replicas failed while answering; retry", 1, {"failed": len(failed)}
                    ) from None
                continue
            except BaseException:
                inflight.release(replica)
                raise
        if not found.running and not cold:
            cold = True
            await on_cold_start()
        if clock() >= deadline:
            what = "failed" if failed else "became ready"
            raise NoReplicaReady(
                f"no replica of {endpoint.name!r} {what} within {timeout_s:g} s (it may be "
                "starting from zero); retry",
                max(1, min(60, int(timeout_s // 2))),
                {"cold_start_timeout_s": timeout_s},
            )
        if await gone():
            raise ClientGone()
        unready.clear()  # an application may have come up since
        await asyncio.sleep(min(poll_s, max(0.0, deadline - clock())))


# --- the replicas' interface ---------------------------------------------------------------


class ReplicaStream(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None:
        """Stop the generation (the client left, or the gateway gave up on it)."""
        ...


class ReplicaBackend(Protocol):
    """What the gateway needs of a replica; raises :class:`ReplicaFailed` when the replica
    cannot answer and :class:`ReplicaRefused` when it refuses the request."""

    async def stream(
        self, replica: Replica, request: dict[str, Any], adapter: str | None
    ) -> ReplicaStream:
        """Deltas ``{"text", "prompt_tokens", "completion_tokens" (so far), "finish_reason"}``."""
        ...

    async def complete(
        self, replica: Replica, request: dict[str, Any], adapter: str | None
    ) -> dict[str, Any]: ...


def classify(exc: BaseException) -> Exception:
    """A Ray or replica error as :class:`ReplicaRefused` (the replica said no: 400) or
    :class:`ReplicaFailed` (anything else: the replica could not answer)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "code", None)
        if type(cur).__name__ == "RequestInvalid" or (
            isinstance(code, str) and code in REQUEST_INVALID_CODES and isinstance(cur, ValueError)
        ):
            message = str(getattr(cur, "message", None) or cur).splitlines()[0][:500]
            return ReplicaRefused(message, code=str(code or "invalid_request"))
        cur = getattr(cur, "cause", None) or cur.__cause__
    return ReplicaFailed(
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    )


class _RayStream:
    def __init__(self, response: Any) -> None:
        self._response = response
        self._done = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for item in self._response:
                yield item
            self._done = True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise classify(exc) from exc

    async def close(self) -> None:
        if not self._done:
            self._done = True
            # Serve cancels the replica's generator, which stops generating. It may be
            # finished or gone already.
            with contextlib.suppress(Exception):
                self._response.cancel()


class RayServeBackend:
    """Replicas as Ray Serve applications, reached with deployment handles (cached)."""

    def __init__(self, ray_address: str | None = None) -> None:
        self._ray_address = ray_address
        self._lock = threading.Lock()
        self._handles: dict[str, Any] = {}

    def _handle(self, replica: Replica) -> Any:
        with self._lock:
            found = self._handles.get(replica.app_name)
        if found is not None:
            return found
        try:
            import ray
            from ray import serve

            if not ray.is_initialized():
                ray.init(address=self._ray_address or "auto", namespace="nuri", log_to_driver=False)
            handle = serve.get_app_handle(replica.app_name)
        except Exception as exc:  # not deployed (yet, or any more), Ray unreachable
            raise ReplicaUnavailable(f"replica {replica.app_name} unavailable: {exc}") from exc
        with self._lock:
            self._handles[replica.app_name] = handle
        return handle

    def forget(self, replica: Replica) -> None:
        with self._lock:
            self._handles.pop(replica.app_name, None)

    async def _handle_async(self, replica: Replica) -> Any:
        with self._lock:
            found = self._handles.get(replica.app_name)
        # Looking an application up is a blocking call to the Serve controller.
        return found if found is not None else await asyncio.to_thread(self._handle, replica)

    async def stream(
        self, replica: Replica, request: dict[str, Any], adapter: str | None
    ) -> ReplicaStream:
        handle = await self._handle_async(replica)
        try:
            response = handle.options(
                stream=True, multiplexed_model_id=adapter or ""
            ).stream.remote(request)
        except Exception as exc:
            self.forget(replica)
            raise classify(exc) from exc
        return _RayStream(response)

    async def complete(
        self, replica: Replica, request: dict[str, Any], adapter: str | None
    ) -> dict[str, Any]:
        handle = await self._handle_async(replica)
        try:
            result: dict[str, Any] = await handle.options(
                multiplexed_model_id=adapter or ""
            ).complete.remote(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = classify(exc)
            if isinstance(failure, ReplicaFailed):
                self.forget(replica)
            raise failure from exc
        return result
