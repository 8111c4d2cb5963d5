"""Staging from file:// sources on real temporary directories: fingerprints, refusals, staging."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from workers import staging
from workers.execution import CapacityPlan, ExecutionPlan, InputPlan, JobDirs, ModelPlan
from workers.staging import (
    ERROR_CODES,
    Fingerprint,
    StagingError,
    fingerprint,
    stage_input,
    stage_plan,
    storage_options_from_env,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing_sha(files: dict[str, bytes]) -> str:
    """The canonical listing hash, computed independently of the module."""
    lines = sorted(f"{rel}\t{len(body)}\t{sha(body)}\n" for rel, body in files.items())
    return sha("".join(lines).encode("utf-8"))


TREE = {
    "train.jsonl": b'{"text": "hello"}\n{"text": "world"}\n',
    "sub/eval.jsonl": b'{"text": "eval"}\n',
    "sub/deeper/notes.txt": b"x" * 5000,
}


def make_tree(root: Path, files: dict[str, bytes] = TREE) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return root


def item(uri: str, fp: Fingerprint, *, id: str = "ds_1", role: str = "data") -> InputPlan:
    return InputPlan(
        id=id, name=f"name-{id}", role=role, uri=uri, sha256=fp.sha256, size_bytes=fp.size_bytes
    )


def code_of(exc: pytest.ExceptionInfo[StagingError]) -> str:
    return exc.value.code


# -- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_of_a_file_is_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    body = os.urandom(20_000)
    (tmp_path / "w.bin").write_bytes(body)
    assert fingerprint(f"file://{tmp_path}/w.bin") == Fingerprint(len(body), sha(body), 1)


def test_fingerprint_of_a_directory_is_the_hash_of_its_canonical_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "ds")
    monkeypatch.setattr(staging, "CHUNK_SIZE", 1000)  # several chunks per file
    expected = Fingerprint(sum(len(b) for b in TREE.values()), listing_sha(TREE), len(TREE))
    assert fingerprint(f"file://{tmp_path}/ds") == expected
    assert fingerprint(f"file://{tmp_path}/ds/") == expected


def test_an_empty_directory_has_a_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert fingerprint(f"file://{tmp_path}/empty") == Fingerprint(0, sha(b""), 0)


def test_a_changed_byte_changes_the_directory_fingerprint(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    before = fingerprint(f"file://{tmp_path}/ds")
    (tmp_path / "ds/sub/eval.jsonl").write_bytes(b'{"text": "evaL"}\n')
    assert fingerprint(f"file://{tmp_path}/ds").sha256 != before.sha256


# -- refusals --------------------------------------------------------------------------------


def test_a_symlink_inside_a_directory_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    (tmp_path / "secret").write_bytes(b"another member's data")
    (tmp_path / "ds/sub/link.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/ds")
    assert code_of(exc) == "unsafe_path" and "sub/link.txt" in str(exc.value)


def test_a_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    make_tree(tmp_path / "elsewhere")
    (tmp_path / "ds/more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/ds")
    assert code_of(exc) == "unsafe_path"


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_symlinked_root_is_refused(tmp_path: Path, kind: str) -> None:
    real = make_tree(tmp_path / "real") if kind == "dir" else tmp_path / "real.bin"
    if kind == "file":
        real.write_bytes(b"weights")
    (tmp_path / "alias").symlink_to(real)
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/alias")
    assert code_of(exc) == "unsafe_path"
    fp = fingerprint(f"file://{real}")
    with pytest.raises(StagingError) as exc:
        stage_input(item(f"file://{tmp_path}/alias", fp), tmp_path / "inputs/data/ds_1")
    assert code_of(exc) == "unsafe_path"
    assert not (tmp_path / "inputs/data/ds_1").exists()


def test_a_fifo_inside_a_directory_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    os.mkfifo(tmp_path / "ds/pipe")
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/ds")
    assert code_of(exc) == "unsafe_path"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://nuri-data/a/../b",
        "s3://nuri-data/../b",
        "s3://nuri-data/a/./b",
        "s3://nuri-data//b",
        "s3://nuri-data/a//b/",
        "s3://nuri-data/a\x00b",
        "s3://nuri-data/a\nb",
        "file:///tmp/a/../etc/passwd",
        "file:///tmp//x",
        "file:///",
    ],
)
def test_unsafe_keys_and_paths_are_refused_before_any_read(uri: str) -> None:
    with pytest.raises(StagingError) as exc:
        fingerprint(uri)  # no server is running: refused without touching a store
    assert code_of(exc) in ("unsafe_path", "unsupported_uri")
    if "\x00" not in uri:
        assert code_of(exc) == "unsafe_path"
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/data/corpus",
        "data/corpus",
        "file:data/corpus",
        "file://host/data/corpus",
        "http://example.com/corpus",
        "gs://bucket/corpus",
        "s3a://bucket/corpus",
        "S3://bucket/corpus",
        "s3://bucket",
        "s3:///key",
        "s3://x/key",
    ],
)
def test_other_uris_are_unsupported(uri: str) -> None:
    with pytest.raises(StagingError) as exc:
        fingerprint(uri)
    assert code_of(exc) == "unsupported_uri"


def test_a_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/nothing-here")
    assert code_of(exc) == "not_found" and str(tmp_path) in str(exc.value)
    (tmp_path / "f.txt").write_bytes(b"x")
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/f.txt/")  # a trailing / names a directory
    assert code_of(exc) == "not_found"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_access_denied(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    (tmp_path / "ds/train.jsonl").chmod(0)
    with pytest.raises(StagingError) as exc:
        fingerprint(f"file://{tmp_path}/ds")
    assert code_of(exc) == "access_denied"


def test_a_file_swapped_for_a_symlink_after_listing_is_refused(tmp_path: Path) -> None:
    """The race a check-then-open would lose: reads never follow a link below the root."""
    make_tree(tmp_path / "ds")
    (tmp_path / "secret").write_bytes(b"s" * len(TREE["sub/eval.jsonl"]))
    label = "swap"
    source = staging._list(f"file://{tmp_path}/ds", None, label)
    target = tmp_path / "ds/sub/eval.jsonl"
    target.unlink()
    target.symlink_to(tmp_path / "secret")
    entry = next(e for e in source.entries if e.rel == "sub/eval.jsonl")
    with pytest.raises(StagingError) as exc:
        staging._read(source, entry, None, label)
    assert code_of(exc) == "unsafe_path"
    # A directory on the way swapped for a link to a copy of it: refused as well.
    (tmp_path / "ds/sub").rename(tmp_path / "moved")
    (tmp_path / "ds/sub").symlink_to(tmp_path / "moved", target_is_directory=True)
    entry = next(e for e in source.entries if e.rel == "sub/deeper/notes.txt")
    with pytest.raises(StagingError) as exc:
        staging._read(source, entry, None, label)
    assert code_of(exc) == "unsafe_path"


def test_a_file_replaced_after_listing_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "ds")
    source = staging._list(f"file://{tmp_path}/ds", None, "x")
    (tmp_path / "other").write_bytes(b"new")  # created first: another inode
    (tmp_path / "other").rename(tmp_path / "ds/train.jsonl")
    entry = next(e for e in source.entries if e.rel == "train.jsonl")
    with pytest.raises(StagingError) as exc:
        staging._read(source, entry, None, "x")
    assert code_of(exc) == "unsafe_path"


# -- staging ---------------------------------------------------------------------------------


def _tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_stage_a_directory_keeps_its_layout_read_only(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    fp = fingerprint(f"file://{src}")
    dest = tmp_path / "job/inputs/data/ds_1"
    record = stage_input(item(f"file://{src}", fp), dest)
    assert record == {
        "id": "ds_1",
        "name": "name-ds_1",
        "role": "data",
        "uri": f"file://{src}",
        "sha256": fp.sha256,
        "size_bytes": fp.size_bytes,
        "files": 3,
        "local_path": str(dest),
        "reused": False,
    }
    assert _tree_of(dest) == TREE
    for p in dest.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o444
    assert fingerprint(f"file://{dest}") == fp  # what was written is what was registered
    assert not [p for p in dest.parent.iterdir() if ".partial-" in p.name]


def test_stage_a_file_becomes_dest_basename(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x00weights" * 100)
    fp = fingerprint(f"file://{tmp_path}/model.safetensors")
    dest = tmp_path / "inputs/model/art_1"
    record = stage_input(item(f"file://{tmp_path}/model.safetensors", fp, role="model"), dest)
    assert [p.name for p in dest.iterdir()] == ["model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == b"\x00weights" * 100
    assert record["files"] == 1 and record["sha256"] == fp.sha256


def test_restaging_reuses_a_complete_copy_without_reading_the_source(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    fp = fingerprint(f"file://{src}")
    dest = tmp_path / "inputs/data/ds_1"
    first = stage_input(item(f"file://{src}", fp), dest)
    marker = json.loads((dest.parent / ".ds_1.staged.json").read_text())
    assert marker["sha256"] == fp.sha256
    for p in sorted(src.rglob("*"), reverse=True):  # the source is gone: no read possible
        p.unlink() if p.is_file() else p.rmdir()
    second = stage_input(item(f"file://{src}", fp), dest)
    assert second == {**first, "reused": True}


def test_a_tampered_copy_is_staged_again(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    fp = fingerprint(f"file://{src}")
    dest = tmp_path / "inputs/data/ds_1"
    stage_input(item(f"file://{src}", fp), dest)
    (dest / "sub/eval.jsonl").unlink()
    again = stage_input(item(f"file://{src}", fp), dest)
    assert again["reused"] is False and _tree_of(dest) == TREE


def test_an_input_without_a_fingerprint_is_staged_and_pinned_by_the_record(
    tmp_path: Path,
) -> None:
    src = make_tree(tmp_path / "ds")
    unpinned = InputPlan(
        id="ds_1", name="n", role="data", uri=f"file://{src}", sha256="", size_bytes=-1
    )
    dest = tmp_path / "inputs/data/ds_1"
    record = stage_input(unpinned, dest)
    expected = (listing_sha(TREE), sum(map(len, TREE.values())), 3, False)
    assert (record["sha256"], record["size_bytes"], record["files"], record["reused"]) == expected
    assert stage_input(unpinned, dest)["reused"] is True
    # Pinned afterwards: the same copy is reused under the pinned fingerprint.
    pinned = item(f"file://{src}", Fingerprint(record["size_bytes"], record["sha256"], 3))
    assert stage_input(pinned, dest)["reused"] is True


@pytest.mark.parametrize("what", ["checksum", "size"])
def test_a_mismatch_leaves_nothing_in_dest(tmp_path: Path, what: str) -> None:
    src = make_tree(tmp_path / "ds")
    fp = fingerprint(f"file://{src}")
    wrong = (
        Fingerprint(fp.size_bytes, sha(b"registered before a change"), fp.files)
        if what == "checksum"
        else Fingerprint(fp.size_bytes + 1, fp.sha256, fp.files)
    )
    dest = tmp_path / "inputs/data/ds_1"
    with pytest.raises(StagingError) as exc:
        stage_input(item(f"file://{src}", wrong), dest)
    assert code_of(exc) == f"{what}_mismatch"
    assert "ds_1" in str(exc.value) and str(src) in str(exc.value)
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_a_mismatch_also_removes_a_stale_copy(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    fp = fingerprint(f"file://{src}")
    dest = tmp_path / "inputs/data/ds_1"
    stage_input(item(f"file://{src}", fp), dest)
    (src / "train.jsonl").write_bytes(b'{"text": "HELLO"}\n{"text": "WORLD"}\n')  # same size
    registered_again = item(f"file://{src}", Fingerprint(fp.size_bytes, sha(b"new"), 3))
    with pytest.raises(StagingError) as exc:
        stage_input(registered_again, dest)
    assert code_of(exc) == "checksum_mismatch"
    assert not dest.exists() and not (dest.parent / ".ds_1.staged.json").exists()


# -- plans -----------------------------------------------------------------------------------


def make_plan(root: Path, inputs: list[InputPlan], model: ModelPlan | None = None) -> ExecutionPlan:
    return ExecutionPlan(
        job_id="job_1",
        attempt=1,
        kind="lora",
        payload="model",
        model=model,
        teacher=None,
        inputs=tuple(inputs),
        capacity=CapacityPlan(
            ranks=1,
            nodes=1,
            ranks_per_node=1,
            precision="bf16",
            zero_stage=2,
            activation_checkpointing=False,
            offload=False,
            micro_batch=1,
            grad_accum=1,
            seq_len=64,
            gpu_memory_gib=80.0,
            gpus_per_node=8,
        ),
        knobs={},
        dirs=JobDirs.under(root),
    )


def test_stage_plan_stages_inputs_then_model_weights_and_adapter(tmp_path: Path) -> None:
    from workers.data import read_records

    data = make_tree(tmp_path / "src/ds")
    (tmp_path / "src/weights.bin").write_bytes(b"w" * 300)
    adapter = make_tree(tmp_path / "src/adapter", {"adapter_config.json": b"{}"})
    ds = item(f"file://{data}", fingerprint(f"file://{data}"), id="ds_1")
    weights = item(
        f"file://{tmp_path}/src/weights.bin",
        fingerprint(f"file://{tmp_path}/src/weights.bin"),
        id="art_w",
        role="model",
    )
    lora = item(f"file://{adapter}", fingerprint(f"file://{adapter}"), id="art_a", role="adapter")
    model = ModelPlan(ref="art_w", preset="axk1-tiny", weights=weights, adapter=lora)
    plan = make_plan(tmp_path / "job", [ds], model)
    records = stage_plan(plan)
    assert [(r["id"], r["role"], r["reused"]) for r in records] == [
        ("ds_1", "data", False),
        ("art_w", "model", False),
        ("art_a", "adapter", False),
    ]
    inputs = tmp_path / "job/inputs"
    assert records[0]["local_path"] == str(inputs / "data/ds_1")
    assert (inputs / "model/art_w/weights.bin").read_bytes() == b"w" * 300
    # Staging's own files stay out of the directories a job reads.
    assert sorted(p.name for p in (inputs / "data").iterdir()) == ["ds_1"]
    assert len(read_records(str(inputs / "data"))) == 4  # the 4 records, no marker
    assert (inputs / ".staging/data/.ds_1.staged.json").is_file()
    assert [r["reused"] for r in stage_plan(plan)] == [True, True, True]


def test_stage_plan_refuses_a_destination_outside_the_inputs(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src/ds")
    fp = fingerprint(f"file://{data}")
    plan = make_plan(tmp_path / "job", [item(f"file://{data}", fp, id="../../escape")])
    with pytest.raises(StagingError) as exc:
        stage_plan(plan)
    assert code_of(exc) == "unsafe_path" and "outside" in str(exc.value)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "job/escape").exists()


@pytest.mark.parametrize("bad_id", ["", ".", "a/b", "../data", ".staging"])
def test_stage_plan_refuses_an_id_that_is_not_one_plain_name(tmp_path: Path, bad_id: str) -> None:
    data = make_tree(tmp_path / "src/ds")
    fp = fingerprint(f"file://{data}")
    other = make_tree(tmp_path / "job/inputs/data/ds_other", {"keep.txt": b"another input"})
    plan = make_plan(tmp_path / "job", [item(f"file://{data}", fp, id=bad_id)])
    with pytest.raises(StagingError) as exc:
        stage_plan(plan)
    assert code_of(exc) == "unsafe_path"
    assert (other / "keep.txt").read_bytes() == b"another input"  # nothing was cleared


def test_stage_plan_refuses_a_role_directory_linked_elsewhere(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "src/ds")
    plan = make_plan(tmp_path / "job", [item(f"file://{data}", fingerprint(f"file://{data}"))])
    (tmp_path / "job/inputs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "job/inputs/data").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(StagingError) as exc:
        stage_plan(plan)
    assert code_of(exc) == "unsafe_path"
    assert list((tmp_path / "outside").iterdir()) == []


# -- errors and options ----------------------------------------------------------------------


def test_error_codes_are_stable() -> None:
    assert set(ERROR_CODES) == {
        "not_found",
        "checksum_mismatch",
        "size_mismatch",
        "access_denied",
        "unsupported_uri",
        "unsafe_path",
    }
    with pytest.raises(ValueError):
        StagingError("oops", "no such code")


def test_storage_options_from_env() -> None:
    assert storage_options_from_env({}) == {}
    assert storage_options_from_env({"NURI_S3_ENDPOINT_URL": " http://minio:9000 "}) == {
        "client_kwargs": {"endpoint_url": "http://minio:9000"}
    }
