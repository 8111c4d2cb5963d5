"""A replica on a real local Ray Serve: completions, streams, concurrency, adapters, placement."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import serve

from tests.ray_local import init_local_ray
from tests.unit.workers.test_serving_engine import make_adapter, make_plan
from workers.serving import GenerationEngine, GenerationRequest, RequestInvalid, build_replica_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

PRESET = "axk1-tiny"
APP = "nuri-ep-1-r0"
PROMPTS = [f"prompt {n}: the cat sat on the" for n in range(8)]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def app_status(name: str) -> Any:
    app = serve.status().applications.get(name)
    return app.status if app is not None else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    init_local_ray(  # a cluster of its own even when another test's Ray is up
        num_cpus=2,
        num_gpus=2,
        resources={"pool:p": 2, "nuri-node:n0": 1},
        include_dashboard=False,
        configure_logging=False,
    )
    # No HTTP proxy at all: replicas are reached through DeploymentHandles, and nothing
    # binds port 8000 (Nuri's API).
    serve.start(proxy_location="Disabled")
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployed(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    src = tmp_path_factory.mktemp("adapters")
    a = make_adapter(src / "kv", 1, ["kv_b_proj", "o_proj"])
    b = make_adapter(src / "mlp", 2, ["q_b_proj", "o_proj"])
    knobs = {"max_tokens_default": 8, "adapters": {"kv": a.id, "mlp": b.id}}
    plan = make_plan(tmp_path_factory.mktemp("replica"), (a, b), **knobs)
    app = build_replica_app(plan.to_dict(), pool="p", node="n0", gpus=1, name="replica")
    t0 = time.monotonic()
    serve.run(app, name=APP, route_prefix=None, blocking=False)
    wait_for(lambda: app_status(APP) == "RUNNING", "the replica to run")
    # The same plan loaded here: the replica's weights must be the same.
    local = GenerationEngine(make_plan(tmp_path_factory.mktemp("local"), (a, b), **knobs))
    return {"handle": serve.get_app_handle(APP), "local": local, "ready_s": time.monotonic() - t0}


def test_completion_and_stream_agree(deployed: dict[str, Any]) -> None:
    handle, local = deployed["handle"], deployed["local"]
    body = {"prompt": PROMPTS[0], "max_tokens": 8}
    done = handle.complete.remote(body).result(timeout_s=60)
    expected = local.complete(GenerationRequest.from_dict(body))
    assert done == expected.to_dict()
    chunks = list(handle.options(stream=True).stream.remote(body))
    assert "".join(c["text"] for c in chunks) == done["text"]
    assert chunks[-1]["finish_reason"] == done["finish_reason"]
    assert [c["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)

    chat = {"messages": [{"role": "user", "content": "안녕"}], "max_tokens": 6}
    assert handle.complete.remote(chat).result(timeout_s=60)["text"] == (
        local.complete(GenerationRequest.from_dict(chat)).text
    )


def test_eight_concurrent_streams_interleave_without_mixing(deployed: dict[str, Any]) -> None:
    handle, local = deployed["handle"], deployed["local"]
    bodies = [{"prompt": p, "max_tokens": 8} for p in PROMPTS]
    streams = [handle.options(stream=True).stream.remote(b) for b in bodies]  # all in flight
    texts = ["".join(c["text"] for c in s) for s in streams]
    expected = [local.complete(GenerationRequest.from_dict(b)).text for b in bodies]
    assert texts == expected
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["peak_ongoing_requests"] >= 2  # the streams ran side by side
    assert stats["ongoing_requests"] == 0 and stats["tokens_generated"] >= 8 * len(bodies) - 8


def test_a_stream_the_client_drops_stops_generating(deployed: dict[str, Any]) -> None:
    handle = deployed["handle"]
    before = handle.stats.remote().result(timeout_s=30)["tokens_generated"]
    stream = handle.options(stream=True).stream.remote({"prompt": "a", "max_tokens": 400})
    next(iter(stream))
    stream.cancel()
    stats = wait_for(
        lambda: (st := handle.stats.remote().result(timeout_s=30))["ongoing_requests"] == 0 and st,
        "the dropped stream to end",
        60,
    )
    assert stats["tokens_generated"] - before < 400


def test_adapters_are_multiplexed(deployed: dict[str, Any]) -> None:
    handle, local = deployed["handle"], deployed["local"]
    body = {"prompt": PROMPTS[1], "max_tokens": 8}
    base = handle.complete.remote(body).result(timeout_s=60)["text"]
    got = {
        name: handle.options(multiplexed_model_id=name).complete.remote(body).result(timeout_s=90)
        for name in ("kv", "mlp")
    }
    assert len({base, got["kv"]["text"], got["mlp"]["text"]}) == 3
    for name, answer in got.items():
        again = handle.options(multiplexed_model_id=name).complete.remote(body).result(timeout_s=60)
        assert again == answer
        assert (
            answer["text"]
            == local.engine_for(name).complete(GenerationRequest.from_dict(body)).text
        )
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["adapters_loaded"] == ["kv", "mlp"]

    with pytest.raises(RequestInvalid) as exc:
        handle.options(multiplexed_model_id="nope").complete.remote(body).result(timeout_s=60)
    assert exc.value.code == "unknown_adapter"


def test_bad_requests_come_back_with_their_code(deployed: dict[str, Any]) -> None:
    handle = deployed["handle"]
    with pytest.raises(RequestInvalid) as exc:
        handle.complete.remote({"prompt": "x" * 600}).result(timeout_s=60)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(RequestInvalid) as bad:
        list(handle.options(stream=True).stream.remote({"prompt": "x", "top_p": 7}))
    assert bad.value.code == "invalid_request"


def test_the_replica_sits_on_its_node_in_its_bundle(deployed: dict[str, Any]) -> None:
    stats = deployed["handle"].stats.remote().result(timeout_s=30)
    pinned = [n["NodeID"] for n in ray.nodes() if "nuri-node:n0" in n.get("Resources", {})]
    assert stats["node_id"] in pinned
    available = ray.available_resources()
    assert available.get("pool:p", 0) == 1  # one of two pool GPUs reserved by the bundle
    assert available.get("GPU", 0) == 1


def test_an_unplaceable_replica_waits_and_delete_frees_everything(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    plan = make_plan(tmp_path, max_tokens_default=4)
    lost = build_replica_app(
        plan.to_dict(), pool="p", node="n9", gpus=1, name="replica", graceful_shutdown_s=0.5
    )
    # serve.run would wait for RUNNING forever: run_many without waiting returns at once.
    target = serve.RunTarget(target=lost, name="nuri-lost", route_prefix=None)
    serve.run_many(
        [target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False
    )
    # Ray cannot reserve a bundle on a node it does not have: the app keeps deploying.
    wait_for(lambda: app_status("nuri-lost") == "DEPLOYING", "the app to be deploying", 30)
    serve.delete(APP)
    wait_for(
        lambda: (
            ray.available_resources().get("pool:p", 0) == 2
            and ray.available_resources().get("GPU", 0) == 2
        ),
        "the bundle to be freed",
        60,
    )
    assert app_status("nuri-lost") == "DEPLOYING"  # still waiting, holding nothing
    serve.delete("nuri-lost", _blocking=False)  # its never-started replica: a grace period
    assert APP not in serve.status().applications
