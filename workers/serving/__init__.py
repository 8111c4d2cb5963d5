"""Online serving: the worker side of an endpoint's replicas (token streaming, LoRA adapters).

A replica runs a stored :class:`workers.execution.ExecutionPlan` of kind ``"serve"``: its model
(a preset, registered weights, an optional LoRA adapter merged into them), its ``adapter``
inputs (the LoRA adapters the endpoint multiplexes, named in ``ServeKnobs.adapters``) and its
knobs. The control plane builds the plan from registered things; a request never becomes a
path, a command or an import here: an adapter a request names is looked up in the plan.

Layers (``request`` → ``engine`` → ``replica``):

- :class:`GenerationRequest` validates what a member sends (the gateway maps OpenAI bodies to
  it) and raises :class:`RequestInvalid` with a stable ``code``.
- :class:`ModelRunner` decodes token by token with the KV cache and yields :class:`Delta`
  pieces of text; :meth:`ModelRunner.complete` is their concatenation, so streamed and
  non-streamed answers are the same text by construction.
- :class:`GenerationEngine` loads a plan's model like batch inference does (seeded, so every
  replica of a plan has the same weights) and keeps a runner per adapter (LRU).
- :class:`ReplicaServer` is the Ray Serve deployment; :func:`build_replica_app` pins one
  replica to the node and pool the admission engine chose, like a job's placement group.
"""

from typing import Any

from workers.serving.engine import GenerationEngine, ModelRunner, check_serve_plan, serve_plan
from workers.serving.request import Completion, Delta, GenerationRequest, RequestInvalid


def __getattr__(name: str) -> Any:
    # Ray Serve is imported only by what deploys or runs replicas: checking a plan
    # (ExecutionPlan.validate) or a request must not need it.
    if name in ("ReplicaServer", "build_replica_app"):
        from workers.serving import replica

        return getattr(replica, name)
    raise AttributeError(name)


__all__ = [
    "Completion",
    "Delta",
    "GenerationEngine",
    "GenerationRequest",
    "ModelRunner",
    "ReplicaServer",
    "RequestInvalid",
    "build_replica_app",
    "check_serve_plan",
    "serve_plan",
]
