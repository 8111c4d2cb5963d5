"""The gateway driven by the official ``openai`` client against a real uvicorn server and a
real replica on a local Ray Serve (issue 14): models, chat and completions, streaming with
one usage chunk, typed errors, and the ledger's record of what the client saw."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.db.models import Dataset, Endpoint, Job, TokenUsage, User
from controlplane.serving.names import SERVE_KIND, replica_app_name
from tests.conftest import World, build_world, make_client
from tests.ray_local import init_local_ray

openai = pytest.importorskip("openai")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

POOL = "kr-test-h200"  # the World's pool
JOB_ID = "job_gateway1"
PRESET = "axk1-tiny"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from workers.execution import CapacityPlan, ExecutionPlan, JobDirs, ModelPlan
    from workers.serving import build_replica_app

    init_local_ray(
        num_cpus=2,
        num_gpus=2,
        resources={f"pool:{POOL}": 2, "nuri-node:n0": 1},
        include_dashboard=False,
        configure_logging=False,
    )
    serve.start(proxy_location="Disabled")  # nothing binds port 8000
    plan = ExecutionPlan(
        job_id=JOB_ID,
        attempt=1,
        kind="serve",
        payload="model",
        model=ModelPlan(ref=PRESET, preset=PRESET),
        teacher=None,
        inputs=(),
        capacity=CapacityPlan(1, 1, 1, "bf16", None, False, False, 1, 1, 512, 80.0, 8),
        knobs={"max_tokens_default": 8},
        dirs=JobDirs.under(tmp_path_factory.mktemp("replica")),
    )
    app = replica_app_name(JOB_ID, 1)
    target = build_replica_app(plan.to_dict(), pool=POOL, node="n0", gpus=1, name="replica")
    serve.run(target, name=app, route_prefix=None, blocking=False)
    wait_for(lambda: getattr(serve.status().applications.get(app), "status", None) == "RUNNING",
             "the replica")  # fmt: skip
    try:
        yield app
    finally:
        serve.shutdown()
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(sqlite_engine: Engine, replica: str) -> Iterator[tuple[World, str]]:
    import uvicorn

    world = build_world(make_client(sqlite_engine))
    seed_endpoint(world)
    port = free_port()
    config = uvicorn.Config(world.client.app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, "uvicorn", 30)
    try:
        yield world, f"http://127.0.0.1:{port}/openai/v1"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def engine_of(w: World) -> Engine:
    return w.client.app.state.engine  # type: ignore[attr-defined,no-any-return]


def seed_endpoint(w: World, config: dict[str, Any] | None = None) -> None:
    """Alpha's endpoint "chat" with its replica job RUNNING in the pool; beta's "secret"."""
    with Session(engine_of(w)) as s:
        for tenant, name in ((w.a, "chat"), (w.b, "secret")):
            user = s.exec(select(User).where(User.member_id == tenant.member["id"])).first()
            assert user is not None
            ep = Endpoint(member_id=tenant.member["id"], creator_id=user.id, name=name,
                          model=PRESET, min_replicas=1, max_replicas=1, gpus_per_replica=1,
                          priority_class="research", config=config or {})  # fmt: skip
            s.add(ep)
            s.flush()
            if tenant is w.a:
                s.add(Job(id=JOB_ID, member_id=ep.member_id, submitter_id=user.id, name="r",
                          kind=SERVE_KIND, model=PRESET, gpus=1, nodes=1, gpus_per_node=1,
                          priority_class="research", max_runtime_s=10**6, preemptible=False,
                          status="RUNNING", pool=POOL, endpoint_id=ep.id))  # fmt: skip
        s.commit()


def set_config(w: World, **config: Any) -> None:
    with Session(engine_of(w)) as s:
        ep = s.exec(select(Endpoint).where(Endpoint.name == "chat")).one()
        ep.config = {**ep.config, **config}
        s.add(ep)
        s.commit()


def rows(w: World) -> list[TokenUsage]:
    with Session(engine_of(w)) as s:
        return list(s.exec(select(TokenUsage).order_by(TokenUsage.created_at)).all())


def client(base: str, token: str) -> Any:
    return openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "the cat sat on the"}]


def test_models_chat_completions_streams_and_the_ledger(server: tuple[World, str]) -> None:
    w, base = server
    c = client(base, w.a.user_token)
    assert [m.id for m in c.models.list().data] == ["chat"]  # never beta's "secret"

    whole = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6,
                                      temperature=0)  # fmt: skip
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 6

    chunks = list(c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    usage = [ch for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and chunks[-1] is usage[0] and usage[0].choices == []
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert usage[0].usage.model_dump() == whole.usage.model_dump()

    legacy = c.completions.create(model="chat", prompt="the cat", max_tokens=5)
    streamed = list(c.completions.create(model="chat", prompt="the cat", max_tokens=5,
                                         stream=True))  # fmt: skip
    assert "".join(ch.choices[0].text for ch in streamed) == legacy.choices[0].text

    # A stream settles once its last event is sent: the client may see [DONE] just before.
    def all_settled() -> list[TokenUsage] | None:
        found = rows(w)
        return found if all(x.settled_at for x in found) else None

    settled = wait_for(all_settled, "settlement", 30)
    assert len(settled) == 4 and all(r.reserved_tokens == 0 for r in settled)
    assert [(r.prompt_tokens, r.completion_tokens) for r in settled[:2]] == [
        (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    ] * 2
    assert all(r.job_id == JOB_ID for r in settled)


def test_a_stream_closed_early_is_settled_once_for_what_was_generated(
    server: tuple[World, str],
) -> None:
    w, base = server
    c = client(base, w.a.user_token)
    stream = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=200,
                                       stream=True)  # fmt: skip
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    row = wait_for(lambda: [r for r in rows(w) if r.settled_at is not None], "settlement")[0]
    assert row.outcome == "disconnected"
    assert 0 < row.completion_tokens <= 200 and row.reserved_tokens == 0


def test_typed_errors(server: tuple[World, str]) -> None:
    w, base = server
    with pytest.raises(openai.AuthenticationError):
        client(base, "nuri_not_a_token").models.list()
    c = client(base, w.a.user_token)
    for model in ("nope", "secret", "chat:no-such-adapter"):
        with pytest.raises(openai.NotFoundError) as nf:
            c.chat.completions.create(model=model, messages=MESSAGES)
        assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="chat", messages=MESSAGES, n=2)
    # a token without the inference scope
    scoped = w.client.post("/v1/tokens", headers=w.as_(w.a.user_token),
                           json={"name": "ro", "scopes": ["read"]}).json()["token"]  # fmt: skip
    with pytest.raises(openai.PermissionDeniedError):
        client(base, scoped).chat.completions.create(model="chat", messages=MESSAGES)
    # rpm 1: the second request in the minute is refused with Retry-After
    set_config(w, rpm=1)
    c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as rl:
        c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2)
    assert rl.value.code == "rate_limit_exceeded"
    assert int(rl.value.response.headers["retry-after"]) >= 1


def test_a_token_budget_refuses_with_insufficient_quota(server: tuple[World, str]) -> None:
    w, base = server
    w.client.patch(f"/v1/budgets/{w.a.budget['id']}", headers=w.root, json={"tokens": 50})
    with pytest.raises(openai.RateLimitError) as err:
        client(base, w.a.user_token).chat.completions.create(model="chat", messages=MESSAGES,
                                                             max_tokens=100)  # fmt: skip
    assert err.value.code == "insufficient_quota"
    events = w.client.get("/v1/audit/events", headers=w.root,
                          params={"action": "gateway.refuse"}).json()  # fmt: skip
    assert "insufficient_quota" in str(events)


def test_residency_fails_closed_naming_the_rule(server: tuple[World, str]) -> None:
    w, base = server
    # The replica's model becomes one the pool may not process: relabel it to another region.
    with Session(engine_of(w)) as s:
        user = s.exec(select(User).where(User.member_id == w.a.member["id"])).first()
        assert user is not None
        model = Dataset(member_id=w.a.member["id"], name="m", kind="model",
                        uri="s3://alpha/m", labels={"jurisdiction": "US",
                                                    "allowed_regions": ["us-east"],
                                                    "classification": "open"})  # fmt: skip
        s.add(model)
        s.flush()
        job = s.get(Job, JOB_ID)
        assert job is not None
        job.model = model.id
        s.add(job)
        s.commit()
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(base, w.a.user_token).chat.completions.create(model="chat", messages=MESSAGES)
    assert err.value.code == "residency_denied"
    assert "denied by" in err.value.message


def test_the_portal_playground_answers_through_the_gateway(server: tuple[World, str]) -> None:
    """The portal's playground on a real replica: the answer, its usage, and the ledger."""
    import re

    from tests.integration.portal.test_portal import signed_in
    from tests.integration.portal.test_portal_endpoints import play

    world, base = server
    direct = client(base, world.a.user_token).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "the cat sat on the"}], max_tokens=5
    )
    page = play(signed_in(world, world.a.user_token), "chat", max_tokens="5")
    assert page.status_code == 200, page.text
    answer = re.search(r'data-testid="playground-answer">(.*?)</div>', page.text, re.S)
    assert answer is not None, page.text
    usage = direct.usage
    assert usage is not None
    total = usage.prompt_tokens + usage.completion_tokens
    assert f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {total}" in (
        answer.group(1)
    )
    settled = [r for r in rows(world) if r.settled_at is not None]
    assert len(settled) == 2  # the client's request and the playground's, the same usage
    assert {(r.prompt_tokens, r.completion_tokens) for r in settled} == {
        (usage.prompt_tokens, usage.completion_tokens)
    }
