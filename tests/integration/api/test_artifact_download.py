"""Downloading artifacts (SQLite and PostgreSQL): ``GET .../download`` answers a short-lived,
signed link, never a server path; ``GET .../content?ref=`` streams the bytes (a directory as a
tar archive built on the fly) without a bearer token, and refuses bad, expired or foreign
references and anything that would leave the artifact (a planted link is refused, not
followed: the whole fetch is a 409, nothing is sent).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controlplane.db.models import AuditEvent, Job
from controlplane.services import artifact_content
from controlplane.services.artifact_content import make_ref, ref_key
from controlplane.services.artifacts import register_output
from tests.conftest import World, bearer, ok


@dataclass
class Area:
    """The app's job area (a tmp dir) and two of member A's artifacts in it."""

    root: Path
    tree: Path  # a directory artifact (an adapter)
    tree_art: dict[str, Any]
    files: dict[str, bytes]  # what the tree holds, by relative path
    single: Path  # a single-file artifact (inference outputs)
    single_art: dict[str, Any]


def _register(w: World, job_id: str, uri: str, read: list[dict[str, Any]] | None = None) -> Any:
    engine = w.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine, expire_on_commit=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        art = register_output(s, job, datetime.now(UTC), uri, "cd" * 32, 1234, read)
        s.commit()
        return art.model_dump(mode="json")


def _job_dir(area: Path, w: World, job_id: str) -> Path:
    return area / w.a.member["id"] / job_id


def _key(w: World) -> bytes:
    return ref_key(w.client.app.state.audit_key)  # type: ignore[attr-defined]


def _anonymous(w: World) -> TestClient:
    """Another client with no token and no cookie: what curl or a browser sends."""
    return TestClient(w.client.app, raise_server_exceptions=False, follow_redirects=False)


@pytest.fixture
def area(world: World, tmp_path: Path) -> Area:
    root = tmp_path.resolve() / "jobs"
    world.client.app.state.settings.jobs_dir = root  # type: ignore[attr-defined]
    # A directory artifact: nested files, an empty directory, a long name (a PAX header), a
    # file larger than one streamed chunk, an empty file, an executable.
    tree = _job_dir(root, world, world.a.job["id"]) / "output" / "adapter"
    files = {
        "adapter_config.json": json.dumps({"r": 8, "alpha": 16}).encode(),
        "weights/adapter_model.safetensors": os.urandom(3 * 1024 * 1024 + 17),
        "weights/empty.bin": b"",
        "tokenizer/" + "x" * 150 + ".json": b'{"long": "name"}',
        "run.sh": b"#!/bin/sh\necho hi\n",
    }
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / "run.sh").chmod(0o755)
    (tree / "logs").mkdir()
    tree_art = _register(world, world.a.job["id"], tree.as_uri())
    # A single-file artifact: an inference job's outputs.
    job = ok(
        world.client.post(
            "/v1/jobs",
            headers=bearer(world.a.user_token),
            json={
                "kind": "inference",
                "model": "axk1-tiny",
                "gpus": 1,
                "name": "answers",
                "inputs": [world.a.dataset["id"]],
            },
        ),
        201,
    )
    single = _job_dir(root, world, job["id"]) / "output" / "outputs.jsonl"
    single.parent.mkdir(parents=True)
    single.write_bytes(b'{"id": 1, "text": "annyeong"}\n{"id": 2, "text": "hello"}\n')
    single_art = _register(world, job["id"], single.as_uri())
    return Area(root, tree, tree_art, files, single, single_art)


def _link(w: World, art_id: str, token: str | None = None) -> dict[str, Any]:
    token = token or w.a.user_token
    return ok(w.client.get(f"/v1/artifacts/{art_id}/download", headers=bearer(token)))  # type: ignore[no-any-return]


def _no_path(area: Area, *responses: Any) -> None:
    for resp in responses:
        text = resp.content.decode("utf-8", "replace") + json.dumps(dict(resp.headers))
        assert str(area.root) not in text and "/output/" not in text, text[:500]


def _fetch_actions(w: World) -> list[tuple[str, str]]:
    engine = w.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.stream == w.a.member["id"])).all()
        return [
            (r.action, r.outcome)
            for r in sorted(rows, key=lambda r: r.seq)
            if r.action.startswith("artifact.")
        ]


def test_a_directory_comes_as_a_tar_of_its_files(world: World, area: Area) -> None:
    before = datetime.now(UTC)
    link = _link(world, area.tree_art["id"])
    assert set(link) == {
        "artifact_id",
        "name",
        "kind",
        "sha256",
        "size_bytes",
        "href",
        "expires_at",
    }
    assert link["artifact_id"] == area.tree_art["id"] and link["kind"] == "adapter"
    assert link["sha256"] == "cd" * 32 and link["size_bytes"] == 1234
    assert link["href"].startswith(f"/v1/artifacts/{area.tree_art['id']}/content?ref=")
    expires = datetime.fromisoformat(link["expires_at"])
    assert before + timedelta(minutes=4) < expires <= datetime.now(UTC) + timedelta(minutes=5)

    resp = _anonymous(world).get(link["href"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-tar"
    assert resp.headers["content-disposition"] == f'attachment; filename="{link["name"]}.tar"'
    assert int(resp.headers["content-length"]) == len(resp.content)
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {*area.files, "weights", "tokenizer", "logs"}
        for name, m in members.items():
            assert not name.startswith("/") and ".." not in name.split("/")
            assert m.isdir() or m.isreg()
            assert m.uid == 0 and m.uname == ""
        for rel, data in area.files.items():
            extracted = tar.extractfile(members[rel])
            assert extracted is not None and extracted.read() == data, rel
        assert members["run.sh"].mode & 0o111 and members["logs"].isdir()
    _no_path(area, resp)
    assert ("artifact.download", "success") in _fetch_actions(world)
    assert ("artifact.fetch", "success") in _fetch_actions(world)
    # The link may be followed again while it is valid (a retried download).
    again = _anonymous(world).get(link["href"])
    assert again.status_code == 200 and again.content == resp.content


def test_a_single_file_comes_as_itself(world: World, area: Area) -> None:
    link = _link(world, area.single_art["id"])
    assert link["name"] == "answers-outputs" and link["kind"] == "outputs"
    resp = _anonymous(world).get(link["href"])
    assert resp.status_code == 200, resp.text
    assert resp.content == area.single.read_bytes()
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["content-disposition"] == 'attachment; filename="answers-outputs.jsonl"'
    assert resp.headers["cache-control"] == "no-store"
    _no_path(area, resp)


def test_bad_expired_and_foreign_references_are_403(world: World, area: Area) -> None:
    key, anon = _key(world), _anonymous(world)
    a = world.a
    tree, single = area.tree_art["id"], area.single_art["id"]
    good = _link(world, tree)["href"].split("ref=", 1)[1]
    soon = datetime.now(UTC) + timedelta(minutes=5)

    def content(art_id: str, ref: str | None) -> Any:
        params = {} if ref is None else {"ref": ref}
        return anon.get(f"/v1/artifacts/{art_id}/content", params=params)

    body, mac = good.split(".")
    flipped = ("A" if body[5] != "A" else "B").join((body[:5], body[6:]))
    forged_claims = make_ref(os.urandom(32), tree, a.user["id"], a.user_token_id, soon)
    refused = {
        "expired": content(
            tree, make_ref(key, tree, a.user["id"], a.user_token_id, datetime.now(UTC))
        ),
        "long expired": content(
            tree,
            make_ref(key, tree, a.user["id"], a.user_token_id, soon - timedelta(days=1)),
        ),
        "payload tampered": content(tree, f"{flipped}.{mac}"),
        "signature tampered": content(
            tree, f"{body}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
        ),
        "another key": content(tree, forged_claims),
        "A's ref on B": content(single, good),
        "no ref": content(tree, None),
        "garbage": content(tree, "not-a-ref"),
        "another user's token": content(
            tree, make_ref(key, tree, a.user["id"], world.b.user_token_id, soon)
        ),
        "a missing artifact": content(
            "art_doesnotexist",
            make_ref(key, "art_doesnotexist", a.user["id"], a.user_token_id, soon),
        ),
    }
    for why, resp in refused.items():
        assert resp.status_code == 403, (why, resp.text)
        # One answer for all: it does not say whether the artifact exists.
        assert resp.json() == refused["expired"].json(), why
        assert resp.json()["code"] == "invalid_reference"
        _no_path(area, resp)
    assert content(tree, good).status_code == 200
    assert ("artifact.fetch", "success") in _fetch_actions(world)


def test_a_revoked_token_ends_its_links(world: World, area: Area) -> None:
    href = _link(world, area.single_art["id"])["href"]
    assert _anonymous(world).get(href).status_code == 200
    revoke = world.client.delete(
        f"/v1/tokens/{world.a.user_token_id}", headers=bearer(world.a.admin_token)
    )
    assert revoke.status_code in (200, 204), revoke.text
    resp = _anonymous(world).get(href)
    assert resp.status_code == 403 and resp.json()["code"] == "invalid_reference"


def test_links_planted_in_an_artifact_refuse_the_whole_fetch(
    world: World, area: Area, tmp_path: Path
) -> None:
    """A symlink (to /etc/passwd, to the database or signing key) or a hard link to a file
    outside the artifact is never followed: the fetch is a 409 and nothing is sent."""
    anon = _anonymous(world)
    href = _link(world, area.tree_art["id"])["href"]
    settings = world.client.app.state.settings  # type: ignore[attr-defined]
    state = [Path("/etc/passwd"), settings.resolved_audit_key_path]
    if (tmp_path / "nuri.db").exists():  # the SQLite database of this test
        state.append(tmp_path / "nuri.db")
    for i, target in enumerate(state):
        link = area.tree / "weights" / f"leak-{i}"
        link.symlink_to(target)
        resp = anon.get(href)
        assert resp.status_code == 409, resp.text
        assert resp.json()["code"] == "unsafe_content"
        assert resp.json()["details"]["entry"] == f"weights/leak-{i}"
        assert str(target) not in resp.text and "root:" not in resp.text
        _no_path(area, resp)
        link.unlink()
    # A symlinked directory inside the artifact, too.
    (area.tree / "etc").symlink_to("/etc", target_is_directory=True)
    resp = anon.get(href)
    assert resp.status_code == 409 and resp.json()["details"]["entry"] == "etc"
    (area.tree / "etc").unlink()
    # A hard link to a file outside the artifact (same file system as the job area).
    secret = tmp_path / "secret.txt"
    secret.write_text("the database's password")
    os.link(secret, area.tree / "secret.txt")
    resp = anon.get(href)
    assert resp.status_code == 409 and "password" not in resp.text
    (area.tree / "secret.txt").unlink()
    assert anon.get(href).status_code == 200
    assert ("artifact.fetch", "failure") in _fetch_actions(world)


def test_what_is_not_nuris_to_serve_is_a_clear_error(
    world: World, area: Area, tmp_path: Path
) -> None:
    anon = _anonymous(world)
    job_id = world.a.job["id"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x").write_text("x")
    # The artifact itself a symlink (the job swapped its output for a link to /etc).
    swapped = _job_dir(area.root, world, job_id) / "output" / "model"
    swapped.symlink_to("/etc", target_is_directory=True)
    cases = {
        "s3": ("s3://alpha-bucket/models/m1/", 409, "not_served"),
        "outside the job area": (outside.as_uri(), 409, "not_served"),
        "another member's area": (
            (area.root / world.b.member["id"] / "x").as_uri(),
            409,
            "not_served",
        ),
        "dot-dot": (
            f"file://{area.root}/{world.a.member['id']}/../../elsewhere",
            409,
            "not_served",
        ),
        "missing": ((area.tree.parent / "gone").as_uri(), 404, "content_missing"),
        "root is a link": (swapped.as_uri(), 409, "unsafe_content"),
        "the etc": ("file:///etc/passwd", 409, "not_served"),
    }
    for why, (uri, status, code) in cases.items():
        art = _register(world, job_id, uri)
        href = _link(world, art["id"])["href"]
        resp = anon.get(href)
        assert resp.status_code == status, (why, resp.text)
        assert set(resp.json()) == {"code", "message", "details"}
        assert resp.json()["code"] == code, why
        assert "elsewhere" not in resp.text and "/etc" not in resp.text, why
        _no_path(area, resp)
    s3 = _register(world, job_id, "s3://alpha-bucket/models/m1/")
    resp = anon.get(_link(world, s3["id"])["href"])
    assert resp.json()["details"]["location"] == "s3://alpha-bucket/models/m1/"


def test_no_answer_holds_a_server_path(world: World, area: Area) -> None:
    a = bearer(world.a.user_token)
    upstream = area.tree.as_uri()
    # A later job read the adapter: its provenance names the input, not where it lies.
    derived = _register(
        world,
        area.single_art["job_id"],
        area.single.as_uri(),
        read=[{"id": area.tree_art["id"], "role": "model", "uri": upstream, "sha256": "cd" * 32}],
    )
    responses = [
        world.client.get("/v1/artifacts", headers=a),
        world.client.get(f"/v1/artifacts/{area.tree_art['id']}", headers=a),
        world.client.get(f"/v1/artifacts/{derived['id']}", headers=a),
        world.client.get(f"/v1/artifacts/{area.tree_art['id']}/download", headers=a),
        world.client.post(
            f"/v1/artifacts/{area.tree_art['id']}/export",
            headers=a,
            json={"region": "kr-seoul", "jurisdiction": "KR"},
        ),
        world.client.get(
            "/v1/audit/events",
            headers=bearer(world.a.admin_token),
            params={"stream": world.a.member["id"], "limit": 1000},
        ),
    ]
    for resp in responses:
        assert resp.status_code == 200, resp.text
    _no_path(area, *responses)
    items = responses[0].json()["items"]
    assert items and all("uri" not in i for i in items)
    mine = {i["id"]: i for i in items}
    assert mine[area.tree_art["id"]]["location"] == "nuri"
    assert mine[world.a.artifact["id"]]["location"] == world.a.artifact["uri"]  # its own S3
    read = responses[2].json()["provenance"]["read"]
    assert read == [
        {"id": area.tree_art["id"], "role": "model", "location": "nuri", "sha256": "cd" * 32}
        | {k: None for k in ("name", "size_bytes")}
    ]
    assert "uri" not in responses[4].json()


def test_the_ref_key_comes_from_the_audit_key(world: World) -> None:
    key = _key(world)
    assert len(key) == 32 and key == artifact_content.ref_key(
        world.client.app.state.audit_key  # type: ignore[attr-defined]
    )
    ref = make_ref(key, "art_x", "usr_x", "tok_x", datetime.now(UTC) + timedelta(minutes=1))
    claims = artifact_content.check_ref(key, "art_x", ref, datetime.now(UTC))
    assert (claims.artifact_id, claims.user_id, claims.token_id) == ("art_x", "usr_x", "tok_x")
    with pytest.raises(artifact_content.InvalidReference):
        artifact_content.check_ref(os.urandom(32), "art_x", ref, datetime.now(UTC))
    with pytest.raises(artifact_content.InvalidReference):
        artifact_content.check_ref(key, "art_y", ref, datetime.now(UTC))
    with pytest.raises(artifact_content.InvalidReference):
        artifact_content.check_ref(key, "art_x", ref, datetime.now(UTC) + artifact_content.REF_TTL)
