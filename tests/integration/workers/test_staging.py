"""Staging from a real S3-compatible server (moto in server mode, IAM enforced) through s3fs.

Objects are uploaded with the real boto3 client; fingerprints and staging go through
:mod:`workers.staging` and s3fs over HTTP. Expected hashes are computed here, independently.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.s3_server import MotoServer, moto_server_fixture
from workers import staging
from workers.execution import CapacityPlan, ExecutionPlan, InputPlan, JobDirs, ModelPlan
from workers.staging import (
    Fingerprint,
    StagingError,
    fingerprint,
    stage_input,
    stage_plan,
    storage_options_from_env,
)

# One server for the module (it starts in about a second, far slower on a machine loaded by
# other test runs: its start counts against the first test); every test is a few requests.
pytestmark = pytest.mark.timeout(300)

s3 = moto_server_fixture("s3", scope="module", iam=True)

CORPUS = {
    "train/part-0000.jsonl": b'{"text": "the cat sat on the mat"}\n' * 40,
    "train/part-0001.jsonl": b'{"text": "the dog ran to the park"}\n' * 25,
    "eval.jsonl": b'{"prompt": "hi", "completion": "hello"}\n',
    "README.md": b"# corpus\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing_sha(files: dict[str, bytes]) -> str:
    lines = sorted(f"{rel}\t{len(body)}\t{sha(body)}\n" for rel, body in files.items())
    return sha("".join(lines).encode("utf-8"))


@pytest.fixture
def bucket(s3: MotoServer) -> str:
    name = f"nuri-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def upload(s3: MotoServer, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = s3.client()
    for rel, body in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{rel}", Body=body)


def item(uri: str, fp: Fingerprint, *, id: str = "ds_s3", role: str = "data") -> InputPlan:
    return InputPlan(
        id=id, name=f"name-{id}", role=role, uri=uri, sha256=fp.sha256, size_bytes=fp.size_bytes
    )


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_of_an_object(
    s3: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = os.urandom(300_000)
    s3.client().put_object(Bucket=bucket, Key="models/w.safetensors", Body=body)
    monkeypatch.setattr(staging, "CHUNK_SIZE", 64 * 1024)  # streamed in several ranged reads
    fp = fingerprint(f"s3://{bucket}/models/w.safetensors", s3.storage_options())
    assert fp == Fingerprint(len(body), sha(body), 1)


def test_fingerprint_of_a_prefix_is_the_hash_of_its_canonical_listing(
    s3: MotoServer, bucket: str
) -> None:
    upload(s3, bucket, "corpus/v1/", CORPUS)
    s3.client().put_object(Bucket=bucket, Key="corpus/v1/train/", Body=b"")  # a folder marker
    s3.client().put_object(Bucket=bucket, Key="corpus/v10/other.jsonl", Body=b"not ours")
    fp = fingerprint(f"s3://{bucket}/corpus/v1/", s3.storage_options())
    assert fp == Fingerprint(sum(map(len, CORPUS.values())), listing_sha(CORPUS), len(CORPUS))


def test_credentials_and_endpoint_from_the_environment(
    s3: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(s3, bucket, "env/", {"a.txt": b"from the environment"})
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    options = storage_options_from_env()
    assert options == {"client_kwargs": {"endpoint_url": s3.url}}
    assert fingerprint(f"s3://{bucket}/env/a.txt", options).sha256 == sha(b"from the environment")


# -- staging ---------------------------------------------------------------------------------


def test_stage_a_prefix(s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    uri = f"s3://{bucket}/corpus/"
    fp = fingerprint(uri, s3.storage_options())
    dest = tmp_path / "inputs/data/ds_s3"
    record = stage_input(item(uri, fp), dest, s3.storage_options())
    assert record == {
        "id": "ds_s3",
        "name": "name-ds_s3",
        "role": "data",
        "uri": uri,
        "sha256": listing_sha(CORPUS),
        "size_bytes": sum(map(len, CORPUS.values())),
        "files": 4,
        "local_path": str(dest),
        "reused": False,
    }
    assert tree_of(dest) == CORPUS
    modes = {stat.S_IMODE(p.stat().st_mode) for p in dest.rglob("*") if p.is_file()}
    assert modes == {0o444}  # staged files are read-only
    assert fingerprint(f"file://{dest}") == fp  # the local copy has the registered fingerprint


def test_stage_a_single_object(s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    body = b"\x00\x01weights" * 1000
    s3.client().put_object(Bucket=bucket, Key="models/tiny/model.safetensors", Body=body)
    uri = f"s3://{bucket}/models/tiny/model.safetensors"
    dest = tmp_path / "inputs/model/art_1"
    registered = Fingerprint(len(body), sha(body), 1)
    record = stage_input(
        item(uri, registered, id="art_1", role="model"), dest, s3.storage_options()
    )
    assert [p.name for p in dest.iterdir()] == ["model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == body
    assert stat.S_IMODE((dest / "model.safetensors").stat().st_mode) == 0o444
    assert (record["sha256"], record["size_bytes"], record["files"]) == (sha(body), len(body), 1)


def test_restage_reuses_the_copy_without_downloading(
    s3: MotoServer, bucket: str, tmp_path: Path
) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    uri = f"s3://{bucket}/corpus/"
    fp = fingerprint(uri, s3.storage_options())
    dest = tmp_path / "inputs/data/ds_s3"
    first = stage_input(item(uri, fp), dest, s3.storage_options())
    # Proof that nothing is read again: the objects are gone and the new credentials may not
    # read S3 at all, yet the complete copy is reused.
    client = s3.client()
    for rel in CORPUS:
        client.delete_object(Bucket=bucket, Key=f"corpus/{rel}")
    assert s3.denied is not None
    second = stage_input(item(uri, fp), dest, s3.storage_options(s3.denied))
    assert second == {**first, "reused": True}
    assert tree_of(dest) == CORPUS


def test_first_read_of_an_unfingerprinted_prefix_pins_it(
    s3: MotoServer, bucket: str, tmp_path: Path
) -> None:
    """How the control plane registers s3:// data: no fingerprint until a job first reads it."""
    upload(s3, bucket, "corpus/", CORPUS)
    uri = f"s3://{bucket}/corpus/"
    unpinned = InputPlan(id="ds_s3", name="c", role="data", uri=uri, sha256="", size_bytes=-1)
    dest = tmp_path / "inputs/data/ds_s3"
    record = stage_input(unpinned, dest, s3.storage_options())
    assert (record["sha256"], record["size_bytes"], record["reused"]) == (
        listing_sha(CORPUS),
        sum(map(len, CORPUS.values())),
        False,
    )
    assert tree_of(dest) == CORPUS
    assert stage_input(unpinned, dest, s3.storage_options())["reused"] is True


# -- failures --------------------------------------------------------------------------------


def _assert_nothing_staged(dest: Path) -> None:
    assert not dest.exists()
    left = [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")]
    assert left == [], left


def test_registered_hash_differs(s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    uri = f"s3://{bucket}/corpus/"
    fp = fingerprint(uri, s3.storage_options())
    wrong = Fingerprint(fp.size_bytes, sha(b"something else"), fp.files)
    dest = tmp_path / "inputs/data/ds_s3"
    with pytest.raises(StagingError) as exc:
        stage_input(item(uri, wrong), dest, s3.storage_options())
    assert exc.value.code == "checksum_mismatch"
    assert "ds_s3" in str(exc.value) and uri in str(exc.value)
    _assert_nothing_staged(dest)


@pytest.mark.parametrize("change", ["same size", "other size"])
def test_object_overwritten_after_registration(
    s3: MotoServer, bucket: str, tmp_path: Path, change: str
) -> None:
    body = b"weights v1 " * 500
    client = s3.client()
    client.put_object(Bucket=bucket, Key="models/w.bin", Body=body)
    uri = f"s3://{bucket}/models/w.bin"
    registered = fingerprint(uri, s3.storage_options())
    new = body.replace(b"v1", b"v2") if change == "same size" else body + b"!"
    client.put_object(Bucket=bucket, Key="models/w.bin", Body=new)
    dest = tmp_path / "inputs/model/art_w"
    with pytest.raises(StagingError) as exc:
        stage_input(item(uri, registered, id="art_w", role="model"), dest, s3.storage_options())
    assert exc.value.code == ("checksum_mismatch" if change == "same size" else "size_mismatch")
    _assert_nothing_staged(dest)


def test_object_in_a_prefix_overwritten_after_registration(
    s3: MotoServer, bucket: str, tmp_path: Path
) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    uri = f"s3://{bucket}/corpus/"
    registered = fingerprint(uri, s3.storage_options())
    s3.client().put_object(
        Bucket=bucket, Key="corpus/eval.jsonl", Body=CORPUS["eval.jsonl"].upper()
    )
    dest = tmp_path / "inputs/data/ds_s3"
    with pytest.raises(StagingError) as exc:
        stage_input(item(uri, registered), dest, s3.storage_options())
    assert exc.value.code == "checksum_mismatch"
    _assert_nothing_staged(dest)


@pytest.mark.parametrize(
    "key", ["models/missing.bin", "missing-prefix/", "corpus"], ids=["object", "prefix", "noslash"]
)
def test_missing_is_not_found(s3: MotoServer, bucket: str, tmp_path: Path, key: str) -> None:
    upload(s3, bucket, "corpus/", CORPUS)  # "corpus" without its "/" is a prefix, not an object
    uri = f"s3://{bucket}/{key}"
    with pytest.raises(StagingError) as exc:
        fingerprint(uri, s3.storage_options())
    assert exc.value.code == "not_found" and uri in str(exc.value)
    dest = tmp_path / "inputs/data/ds_s3"
    with pytest.raises(StagingError) as exc:
        stage_input(item(uri, Fingerprint(1, sha(b"x"), 1)), dest, s3.storage_options())
    assert exc.value.code == "not_found"
    _assert_nothing_staged(dest)


def test_missing_bucket_is_not_found(s3: MotoServer) -> None:
    with pytest.raises(StagingError) as exc:
        fingerprint(f"s3://nuri-no-such-bucket-{uuid.uuid4().hex[:8]}/x/", s3.storage_options())
    assert exc.value.code == "not_found"


@pytest.mark.parametrize("key", ["models/w.bin", "corpus/"], ids=["object", "prefix"])
def test_access_denied(s3: MotoServer, bucket: str, tmp_path: Path, key: str) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    s3.client().put_object(Bucket=bucket, Key="models/w.bin", Body=b"w")
    assert s3.denied is not None
    denied = s3.storage_options(s3.denied)
    uri = f"s3://{bucket}/{key}"
    with pytest.raises(StagingError) as exc:
        fingerprint(uri, denied)
    assert exc.value.code == "access_denied"
    registered = fingerprint(uri, s3.storage_options())  # the admin may read it
    dest = tmp_path / "inputs/data/ds_s3"
    with pytest.raises(StagingError) as exc:
        stage_input(item(uri, registered), dest, denied)
    assert exc.value.code == "access_denied"
    assert "ds_s3" in str(exc.value) and uri in str(exc.value) and "\n" not in str(exc.value)
    _assert_nothing_staged(dest)


def test_unknown_key_is_access_denied(s3: MotoServer, bucket: str) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    options: dict[str, Any] = {
        **s3.storage_options(),
        "key": "AKIANOTAREALKEY00000",
        "secret": "not-a-secret",
    }
    with pytest.raises(StagingError) as exc:
        fingerprint(f"s3://{bucket}/corpus/", options)
    assert exc.value.code == "access_denied"


# -- a whole plan ----------------------------------------------------------------------------


def test_stage_plan_from_s3(s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    upload(s3, bucket, "corpus/", CORPUS)
    weights = b"w" * 4096
    s3.client().put_object(Bucket=bucket, Key="models/base.bin", Body=weights)
    data_uri, weights_uri = f"s3://{bucket}/corpus/", f"s3://{bucket}/models/base.bin"
    options = s3.storage_options()
    ds = item(data_uri, fingerprint(data_uri, options), id="ds_1")
    w = item(weights_uri, fingerprint(weights_uri, options), id="art_1", role="model")
    plan = ExecutionPlan(
        job_id="job_s3",
        attempt=1,
        kind="lora",
        payload="model",
        model=ModelPlan(ref="art_1", preset="axk1-tiny", weights=w),
        teacher=None,
        inputs=(ds,),
        capacity=CapacityPlan(1, 1, 1, "bf16", 2, False, False, 1, 1, 64, 80.0, 8),
        knobs={},
        dirs=JobDirs.under(tmp_path / "job"),
    )
    records = stage_plan(plan, options)
    assert [(r["id"], r["reused"]) for r in records] == [("ds_1", False), ("art_1", False)]
    assert tree_of(tmp_path / "job/inputs/data/ds_1") == CORPUS
    assert (tmp_path / "job/inputs/model/art_1/base.bin").read_bytes() == weights
