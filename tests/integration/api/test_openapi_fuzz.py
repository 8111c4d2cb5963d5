"""Schemathesis over the whole OpenAPI (issue 12, item 2): every operation, with the tokens
of a member user, a member admin and the platform admin, valid and invalid inputs; no server
error, every status documented, every response conforming to its documented schema.

Bounded for ``make test`` (a few thousand requests) and derandomized so CI is repeatable; a
deeper, random run: ``NURI_FUZZ_EXAMPLES=200 NURI_FUZZ_RANDOM=1 pytest -s -k fuzz``.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks

from controlplane.api.limits import RateLimiter
from tests.conftest import World, bearer

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def fuzz(world: World, examples: int) -> tuple[Counter[str], list[str]]:
    """Run every operation for each identity and mode; returns the cases run per identity
    and one line per distinct failure."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    identities = {
        "member user": bearer(world.a.user_token),
        "member admin": bearer(world.a.admin_token),
        "platform admin": world.root,
    }
    cases: Counter[str] = Counter()
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 55  # every route is in the document
    for who, headers in identities.items():
        for op in operations:
            for mode in MODES if negatable(op) else MODES[:1]:
                test = _case_test(op, mode, who, headers, examples, cases, failures)
                with contextlib.suppress(Unsatisfiable):  # nothing to make invalid here
                    test()
    return cases, list(failures.values())


def test_schemathesis_finds_nothing(world: World) -> None:
    default = 8 if world.client.app.state.engine.dialect.name == "sqlite" else 3  # type: ignore[attr-defined]
    examples = int(os.environ.get("NURI_FUZZ_EXAMPLES", default))
    # Off: thousands of requests a minute with one token would mostly be answered 429.
    world.client.app.state.rate_limiter = RateLimiter(0, 1)  # type: ignore[attr-defined]
    cases, failures = fuzz(world, examples)
    print(f"schemathesis: {sum(cases.values())} cases {dict(cases)}, {len(failures)} failures")
    assert not failures, "\n\n".join(failures[:20])
    # It ran: every identity sent at least a case per operation and mode.
    assert min(cases.values()) >= 55 + 30


def test_every_operation_documents_the_errors_it_can_answer(world: World) -> None:
    doc = world.client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert set(doc["components"]["schemas"]["ErrorBody"]["required"]) >= {"code", "message"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    seen = 0
    for path, ops in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            seen += 1
            responses = op["responses"]
            for status in ("401", "403", "404", "422", "503"):
                assert responses[status]["content"]["application/json"]["schema"] == error, (
                    method,
                    path,
                    status,
                )
            assert "Retry-After" in responses["503"]["headers"]
            if method != "get":
                assert "409" in responses, (method, path)
            if "requestBody" in op:
                assert "413" in responses, (method, path)
            if op["operationId"] != "fetchArtifactContent":
                assert "Retry-After" in responses["429"]["headers"], (method, path)
    assert seen >= 55
    usage = doc["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]
    assert set(usage) == {"application/json", "text/csv"}
    csv = world.client.get("/v1/usage?period=2026-Q4&format=csv", headers=world.root)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")


def negatable(op: Any) -> bool:
    """Whether Schemathesis can make invalid input for ``op``: a body, or a parameter with a
    type or constraint to break (a plain string path parameter has none; trying costs a
    second of rejected draws per operation)."""
    definition = op.definition.raw
    if "requestBody" in definition:
        return True
    plain = ({"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]})
    for param in definition.get("parameters", []):
        shape = {
            k: v for k, v in param.get("schema", {}).items() if k not in ("title", "description")
        }
        if shape not in plain:
            return True
    return False


def _case_test(
    op: Any,
    mode: schemathesis.GenerationMode,
    who: str,
    headers: dict[str, str],
    examples: int,
    cases: Counter[str],
    failures: dict[str, str],
) -> Any:
    """One Hypothesis test: cases of ``op`` in ``mode`` sent as ``who``, every failure kept
    (the first line of each distinct one as its key) rather than stopping at the first."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=os.environ.get("NURI_FUZZ_RANDOM") != "1",
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        cases[who] += 1
        case.headers = {**(case.headers or {}), **headers}
        try:
            case.call_and_validate(checks=CHECKS)
        except Exception as exc:
            first = " | ".join(x for x in str(exc).splitlines() if x.strip())
            failures.setdefault(f"{who} {op.label}: {first[:300]}", str(exc)[:2000])

    return run
