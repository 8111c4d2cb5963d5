"""Concurrent streams through the real gateway against a token budget (issue 14): N >= 32
streaming chat requests at once, a member budget that covers only some of them. Whatever the
interleaving, the ledger never charges more than the budget, every refusal is a 429
``insufficient_quota``, and every admitted stream ends with its usage chunk, which its ledger
row equals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from controlplane.db.models import TokenUsage
from controlplane.serving import metering
from controlplane.usage import period_of
from tests.conftest import World
from tests.integration.serving import test_gateway_openai as conformance
from tests.integration.serving.test_gateway_openai import JOB_ID, MESSAGES, rows, wait_for

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

# The conformance module's fixtures: one real replica on a local Ray Serve (this module's own,
# module-scoped), a uvicorn server, alpha's endpoint "chat" with its replica job RUNNING.
replica = conformance.replica
server = conformance.server

N = 40
MAX_TOKENS = 4


async def one_stream(c: Any, start: asyncio.Event) -> dict[str, Any]:
    """One streaming chat request: its chunks, or the refusal it got."""
    await start.wait()
    try:
        stream = await c.chat.completions.create(
            model="chat", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [ch async for ch in stream]
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "code": exc.code, "type": exc.type}
    return {"status": 200, "chunks": chunks}


async def all_streams(base: str, token: str) -> list[dict[str, Any]]:
    # One connection per request, so all N are in the server at once.
    http = openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=N))
    c = openai.AsyncOpenAI(base_url=base, api_key=token, max_retries=0, timeout=120,
                           http_client=http)  # fmt: skip
    start = asyncio.Event()
    try:
        tasks = [asyncio.create_task(one_stream(c, start)) for _ in range(N)]
        await asyncio.sleep(0)  # every task waits on the event before any request leaves
        start.set()
        return await asyncio.gather(*tasks)
    finally:
        await c.close()


def test_concurrent_streams_never_charge_more_than_the_budget(server: tuple[World, str]) -> None:
    w, base = server
    # A request reserves its worst case: the prompt's bound plus max_tokens.
    worst = metering.prompt_token_bound(MESSAGES) + MAX_TOKENS
    cap = worst * (N // 4) + worst // 2  # a quarter of them at once, not all
    resp = w.client.patch(f"/v1/budgets/{w.a.budget['id']}", headers=w.root,
                          json={"tokens": cap})  # fmt: skip
    assert resp.status_code == 200, resp.text

    results = asyncio.run(all_streams(base, w.a.user_token))

    refused = [r for r in results if r["status"] != 200]
    admitted = [r for r in results if r["status"] == 200]
    assert refused and admitted, (len(refused), len(admitted))
    assert all(
        (r["status"], r["code"], r["type"]) == (429, "insufficient_quota", "insufficient_quota")
        for r in refused
    ), refused

    # Every admitted stream ended with exactly one usage chunk, last, with no choices.
    reported: dict[str, tuple[int, int]] = {}
    for r in admitted:
        chunks = r["chunks"]
        usage = [ch for ch in chunks if ch.usage is not None]
        assert len(usage) == 1 and chunks[-1] is usage[0] and usage[0].choices == []
        assert 0 < usage[0].usage.completion_tokens <= MAX_TOKENS
        assert usage[0].usage.prompt_tokens + usage[0].usage.completion_tokens <= worst
        reported[usage[0].id.removeprefix("chatcmpl-")] = (
            usage[0].usage.prompt_tokens,
            usage[0].usage.completion_tokens,
        )
    assert len(reported) == len(admitted)

    # The ledger: one settled row per admitted request (a refusal leaves none), each equal to
    # the usage its client saw, and all of them together within the cap.
    def settled() -> list[TokenUsage] | None:
        found = rows(w)
        return found if found and all(x.settled_at for x in found) else None

    ledger = {r.id: r for r in wait_for(settled, "settlement", 60)}
    assert set(ledger) == set(reported)
    for rid, (prompt, completion) in reported.items():
        row = ledger[rid]
        assert (row.prompt_tokens, row.completion_tokens) == (prompt, completion)
        assert row.reserved_tokens == 0 and row.job_id == JOB_ID
        assert row.outcome in ("stop", "length")
        assert row.period == period_of(datetime.now(UTC))
    charged = sum(r.prompt_tokens + r.completion_tokens for r in ledger.values())
    assert charged <= cap
