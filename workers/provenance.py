"""Provenance manifests for artifacts: what went in, what came out, with SHA-256 hashes.

Every job writes ``<output_dir>/manifest.json`` when it finishes. The control plane registers
the artifacts from it and computes their effective residency label from the listed inputs
(the base or teacher model included), ARCHITECTURE §5.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# Model weights larger than this are identified by their headers instead of a full hash:
# re-hashing a 1 TB checkpoint for every job would cost more than the job.
FULL_HASH_LIMIT_BYTES = 2 << 30
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Path (relative to ``root``), size and SHA-256 of every file under ``root``."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    out = []
    for f in files:
        rel = f.name if root.is_file() else str(f.relative_to(root))
        parts = Path(rel).parts
        if rel in exclude or parts[0] in exclude or any(p.startswith(".") for p in parts):
            continue
        out.append({"path": rel, "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    return out


def _upstream_manifest(weights_dir: Path) -> Path | None:
    """The manifest of the Nuri job that wrote ``weights_dir`` (it sits in the job's output
    directory, one level up, and lists the model's files under the directory's name)."""
    for candidate in (weights_dir / MANIFEST, weights_dir.parent / MANIFEST):
        if not candidate.exists():
            continue
        artifacts = json.loads(candidate.read_text()).get("artifacts", [])
        prefix = "" if candidate.parent == weights_dir else f"{weights_dir.name}/"
        if any(str(a.get("path", "")).startswith(prefix) for a in artifacts):
            return candidate
    return None


def model_identity(name: str, config: Any, weights_dir: Path | None, seed: int) -> dict[str, Any]:
    """How a model input is identified: config hash plus a weights hash (or the seed)."""
    config_json = json.dumps(config.to_dict(), sort_keys=True, default=str)
    identity: dict[str, Any] = {
        "name": name,
        "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
    }
    if weights_dir is None:
        identity["init"] = {"random_seed": seed}
        return identity
    identity["weights_dir"] = str(weights_dir)
    upstream = _upstream_manifest(weights_dir)
    if upstream is not None:
        # A model another Nuri job produced: its manifest already hashes every file.
        identity["manifest_sha256"] = sha256_file(upstream)
        identity["produced_by"] = json.loads(upstream.read_text()).get("job_id")
        return identity
    files = sorted(p for p in weights_dir.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    if total <= FULL_HASH_LIMIT_BYTES:
        for f in files:
            digest.update(str(f.relative_to(weights_dir)).encode())
            digest.update(bytes.fromhex(sha256_file(f)))
        identity["weights_sha256"] = digest.hexdigest()
        identity["weights_hash_method"] = "content"
    else:
        for f in files:
            with f.open("rb") as fh:
                head = fh.read(CHUNK)  # safetensors header: every tensor's name, dtype, offsets
            digest.update(f"{f.relative_to(weights_dir)}:{f.stat().st_size}:".encode() + head)
        identity["weights_sha256"] = digest.hexdigest()
        identity["weights_hash_method"] = "names+sizes+first-MiB"
    return identity


def write_manifest(
    output_dir: Path,
    *,
    job_id: str,
    kind: str,
    base_model: dict[str, Any],
    inputs: list[dict[str, Any]],
    teacher: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Hash every file under ``output_dir`` and write the manifest next to them.

    The event log and resumable checkpoints are left out: the log is still being appended to
    and checkpoints are reported one by one as they are taken.
    """
    artifacts = describe_files(output_dir, exclude=(MANIFEST, "events.jsonl", "checkpoints"))
    manifest = {
        "schema": "nuri.artifact-manifest/1",
        "job_id": job_id,
        "kind": kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": base_model,
        "teacher": teacher,
        "inputs": inputs,
        "artifacts": artifacts,
        **(extra or {}),
    }
    path = output_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return path


def describe_input(path: str, dataset_id: str | None) -> dict[str, Any]:
    """A dataset input: its id, local path and content hashes."""
    p = Path(path)
    return {"id": dataset_id, "path": str(p), "files": describe_files(p)}
