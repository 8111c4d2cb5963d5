"""Values the database or the response encoding cannot hold are bad input (4xx), never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import World, bearer


def assert_4xx(resp: object) -> dict[str, object]:
    status = resp.status_code  # type: ignore[attr-defined]
    assert 400 <= status < 500, resp.text  # type: ignore[attr-defined]
    body: dict[str, object] = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"code", "message", "details"}
    return body


@pytest.mark.parametrize("path", ["/v1/policies/versions/{n}/activate"])
def test_integers_past_64_bits_in_paths(world: World, path: str) -> None:
    for n in (2**63, 2**64 + 7, 10**30, -(2**63) - 1):
        resp = world.client.post(path.format(n=n), headers=world.root)
        assert_4xx(resp)


def test_text_the_database_refuses_is_a_4xx_or_stored_exactly(world: World) -> None:
    resp = world.client.post(
        "/v1/datasets",
        headers=bearer(world.a.user_token),
        json={
            "name": "nul-uri",
            "uri": "s3://a/with\u0000nul",
            "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
        },
    )
    if resp.status_code == 201:  # SQLite stores NUL: it must come back exactly
        got = world.client.get("/v1/datasets/nul-uri", headers=bearer(world.a.user_token))
        assert got.json()["uri"] == "s3://a/with\u0000nul"
    else:
        assert_4xx(resp)


def test_a_lone_surrogate_in_a_config_key_is_refused_not_a_500(world: World) -> None:
    body = (
        '{"kind": "lora", "model": "axk1-tiny", "gpus": 1, "inputs": ["alpha-corpus"],'
        ' "config": {"\\ud800": 1}}'
    )
    resp = world.client.post(
        "/v1/jobs",
        headers={**bearer(world.a.user_token), "Content-Type": "application/json"},
        content=body.encode(),
    )
    out = assert_4xx(resp)
    assert out["code"] in ("invalid_config", "validation_error", "unrecordable_text")
