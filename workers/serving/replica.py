"""The Ray Serve deployment of a replica and the application that pins it to its node."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from workers.knobs import MAX_ADAPTERS_PER_REPLICA
from workers.serving.engine import GenerationEngine, ModelRunner, check_serve_plan, serve_plan
from workers.serving.request import Delta, GenerationRequest, invalid_request

# Ray resource names of a Nuri node and pool (controlplane.scheduler.executor uses the same).
NODE_PREFIX = "nuri-node:"
POOL_PREFIX = "pool:"
PIN = 0.001  # a token amount of the node's resource: pins the bundle, never constrains


@dataclass
class _AdapterSlot:
    """What Serve's multiplexer caches: Serve calls ``__del__`` when it evicts a slot."""

    runner: ModelRunner
    on_unload: Callable[[_AdapterSlot], None] = field(repr=False)

    def __del__(self) -> None:
        self.on_unload(self)


def _close(steps: Iterator[Delta], lock: threading.Lock) -> None:
    with lock:  # never while a worker thread is inside the generator
        close = getattr(steps, "close", None)
        if close is not None:
            close()


@serve.deployment
class ReplicaServer:
    """One replica of an endpoint: streams, completions and stats through a DeploymentHandle.

    Every model step runs in a worker thread under one lock per replica, so concurrent
    streams interleave token by token (FIFO) and the event loop stays free.
    """

    def __init__(self, plan: dict[str, Any]) -> None:
        import torch

        self.plan = serve_plan(plan)
        self.engine = GenerationEngine(
            self.plan, device="cuda" if torch.cuda.is_available() else "cpu"
        )
        self._turn = asyncio.Lock()
        self._step = threading.Lock()
        self._ongoing = 0
        self._peak = 0
        self._requests = 0
        self._tokens = 0
        self._loaded: dict[str, _AdapterSlot] = {}
        # The class attribute below lets Serve see the multiplexing when it deploys; this
        # instance one caps the adapters at the plan's max_adapters_per_replica.
        cap = self.engine.knobs.max_adapters_per_replica

        async def load(model_id: str) -> _AdapterSlot:
            return await self._load_slot(model_id)

        self.__dict__["get_adapter_engine"] = serve.multiplexed(max_num_models_per_replica=cap)(
            load
        )

    @serve.multiplexed(max_num_models_per_replica=MAX_ADAPTERS_PER_REPLICA)  # type: ignore[untyped-decorator]
    async def get_adapter_engine(self, model_id: str) -> _AdapterSlot:
        return await self._load_slot(model_id)

    async def _load_slot(self, model_id: str) -> _AdapterSlot:
        runner = await asyncio.to_thread(self.engine.load_adapter, model_id)
        slot = _AdapterSlot(runner, self._unloaded)
        self._loaded[model_id] = slot
        return slot

    def _unloaded(self, slot: _AdapterSlot) -> None:
        name = slot.runner.adapter
        if name is not None and self._loaded.get(name) is slot:
            del self._loaded[name]

    async def _runner(self, request: GenerationRequest) -> ModelRunner:
        routed = serve.get_multiplexed_model_id() or None
        if routed and request.adapter and routed != request.adapter:
            raise invalid_request(
                f"the request names adapter {request.adapter!r} but was routed to {routed!r}"
            )
        adapter = routed or request.adapter
        if not adapter:
            return self.engine
        self.engine.check_adapter(adapter)  # before Serve records a model id it cannot load
        slot: _AdapterSlot = await self.get_adapter_engine(adapter)
        return slot.runner

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Deltas as plain dicts (``handle.options(stream=True).stream.remote(body)``)."""
        req = GenerationRequest.from_dict(request)
        runner = await self._runner(req)
        steps = runner.stream(req)  # raises context_length_exceeded before anything streams
        self._ongoing += 1
        self._peak = max(self._peak, self._ongoing)
        self._requests += 1
        counted = 0

        def step() -> Delta | None:
            with self._step:
                return next(steps, None)

        try:
            while True:
                async with self._turn:
                    delta = await asyncio.to_thread(step)
                if delta is None:
                    return
                self._tokens += delta.completion_tokens - counted
                counted = delta.completion_tokens
                yield delta.to_dict()
                if delta.finish_reason is not None:
                    return
        finally:
            self._ongoing -= 1
            await asyncio.to_thread(_close, steps, self._step)

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole answer: ``{"text", "prompt_tokens", "completion_tokens", "finish_reason"}``."""
        parts: list[str] = []
        last: dict[str, Any] = {}
        async for last in self.stream(request):
            parts.append(last["text"])
        return {**last, "text": "".join(parts)}

    async def stats(self) -> dict[str, Any]:
        import ray

        return {
            "ongoing_requests": self._ongoing,
            "peak_ongoing_requests": self._peak,
            "requests": self._requests,
            "tokens_generated": self._tokens,
            "adapters_loaded": sorted(self._loaded),
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": str(self.engine.device),
        }

    def check_health(self) -> None:
        if self.engine.model is None:
            raise RuntimeError("the replica has no model")


def build_replica_app(
    plan: dict[str, Any],
    *,
    pool: str,
    node: str,
    gpus: int,
    cpus: float = 1.0,
    name: str,
    graceful_shutdown_s: float = 20.0,
) -> Any:
    """The Serve application of one replica of ``plan`` on Nuri node ``node`` of ``pool``.

    Its placement group is one bundle like a job's (``GPU`` and ``pool:<pool>`` amounts,
    a token of ``nuri-node:<node>``), STRICT_PACK. Serve puts the replica actor in bundle 0
    and requires its resources to fit there: the actor takes the bundle's CPUs and GPUs so
    that Ray gives it exactly those GPUs (``CUDA_VISIBLE_DEVICES``).
    """
    knobs = check_serve_plan(serve_plan(plan))
    if gpus < 0 or cpus <= 0:
        raise ValueError("a replica needs cpus > 0 and gpus >= 0")
    bundle: dict[str, float] = {"CPU": float(cpus), f"{NODE_PREFIX}{node}": PIN}
    if gpus:
        bundle.update({"GPU": float(gpus), f"{POOL_PREFIX}{pool}": float(gpus)})
    server: Any = ReplicaServer  # a serve.Deployment at run time
    deployment = server.options(
        name=name,
        num_replicas=1,
        max_ongoing_requests=knobs.max_ongoing_requests,
        placement_group_bundles=[bundle],
        placement_group_strategy="STRICT_PACK",
        graceful_shutdown_timeout_s=graceful_shutdown_s,
        ray_actor_options={"num_cpus": float(cpus), "num_gpus": float(gpus)},
    )
    return deployment.bind(plan)
