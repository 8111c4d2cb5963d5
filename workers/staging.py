"""Staging: copy a job's registered inputs from their store to the job's input directory.

A registered dataset, model or adapter is a URI plus the fingerprint taken when it was
registered (:func:`fingerprint`). Before a job starts, :func:`stage_plan` copies every input
of its :class:`~workers.execution.ExecutionPlan` to ``staged_path(plan, item)`` and proves that
what landed on local disk is exactly what was registered; a worker reads nothing else.

Stores (through fsspec): ``file:///absolute/path`` (built in) and ``s3://bucket/key`` (s3fs;
a URI ending in ``/`` names a prefix). Options for s3fs come from the caller, usually
:func:`storage_options_from_env`; credentials from the standard ``AWS_*`` variables.

Fingerprint (:class:`Fingerprint`): for one object or file, the SHA-256 of its bytes; for a
directory or prefix, the SHA-256 of the canonical listing, the sorted lines
``f"{relative_posix_path}\\t{size}\\t{sha256_of_file}\\n"`` (UTF-8), so one hash names the whole
tree. Sizes are total bytes. Zero-byte S3 "folder" markers (keys ending in ``/``) hold no data
and are left out of a prefix. Everything is read in chunks; no file is held in memory.

Safety: only absolute ``file:///...`` and ``s3://bucket/...`` URIs are accepted; a path or key
with ``..``, ``.``, an empty segment, a leading ``/`` or a control character (NUL, tab,
newline...) is refused, as is a prefix holding both ``a`` and ``a/b``. In a ``file://`` source
a symlink (the root itself or anything below it) or a special file is refused, never
followed: local files are opened component by component with ``O_NOFOLLOW`` beneath the
source root and checked against the listing (same inode, a regular file), so a file swapped
for a link while being staged is refused too. (For that reason local *reads* use ``os.open``
rather than fsspec's opener, which follows links; listing goes through fsspec.)

Staging writes into a hidden temporary sibling of the destination and renames it into place
only after the fingerprint of what was written matches the registration, then writes a marker
(``.<dest name>.staged.json``, next to ``dest`` or, for a plan, under ``<inputs>/.staging/``)
last. A destination with a valid marker is reused
without reading the store again. Staged files are read-only (0o444). An input registered
without a fingerprint (``sha256 ""``, ``size_bytes -1``: an ``s3://`` dataset before its first
read) is staged as the store holds it, and the returned record is what the caller pins.
Concurrent stagers of the same destination on one host serialise on a lock file kept with the
marker.

Errors are :class:`StagingError` with a stable ``code`` (:data:`ERROR_CODES`). Transient
failures (network, a full disk) propagate unchanged so the caller may retry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from workers.execution import ExecutionPlan, InputPlan, staged_path

ERROR_CODES = (
    "not_found",
    "checksum_mismatch",
    "size_mismatch",
    "access_denied",
    "unsupported_uri",
    "unsafe_path",
)
CHUNK_SIZE = 8 * 1024 * 1024  # bytes per read; the most of a file ever held in memory
MARKER_FORMAT = 1
ENDPOINT_ENV = "NURI_S3_ENDPOINT_URL"
STATE_DIR = ".staging"  # under a job's input directory: staging markers and locks

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # never block opening a FIFO swapped in


class StagingError(Exception):
    """A registered input that cannot be fingerprinted or staged; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown staging error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Fingerprint:
    """What identifies registered data: total bytes, one SHA-256, and how many files."""

    size_bytes: int
    sha256: str
    files: int


# ------------------------------------------------------------------------------------------
# URIs and paths


def _show(text: object) -> str:
    """``text`` fit for a one-line message (quoted when it holds control characters)."""
    s = text if isinstance(text, str) else repr(text)
    if not s.isprintable():
        s = repr(s)
    return s if len(s) <= 300 else s[:297] + "..."


def _check_segments(parts: list[str], label: str, what: str) -> None:
    for part in parts:
        if part in ("", ".", ".."):
            shown = "an empty segment" if part == "" else f"a {part!r} segment"
            raise StagingError("unsafe_path", f"{label}: {what} has {shown}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise StagingError(
                "unsafe_path", f"{label}: {what} {_show(part)} holds a control character"
            )
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise StagingError(
                "unsafe_path", f"{label}: {what} {_show(part)} is not valid UTF-8"
            ) from None


def _relative_parts(rel: str, label: str) -> list[str]:
    """The segments of a relative path inside a tree (an object key below a prefix)."""
    if rel.startswith("/"):
        raise StagingError("unsafe_path", f"{label}: {_show(rel)} starts with '/'")
    parts = rel.split("/")
    _check_segments(parts, label, f"path {_show(rel)}")
    return parts


@dataclass(frozen=True)
class _Location:
    scheme: str  # "file" | "s3"
    path: str  # file: absolute path without a trailing /; s3: "bucket/key" or "bucket/prefix/"
    bucket: str
    key: str  # s3: the key, or the prefix with its trailing "/" ("" for a whole bucket)
    prefix: bool  # the URI ends in "/"


def _parse(uri: object, label: str) -> _Location:
    if not isinstance(uri, str) or "\x00" in uri:
        raise StagingError("unsupported_uri", f"{label}: not a URI")
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise StagingError(
                "unsupported_uri",
                f"{label}: a file URI names an absolute local path (file:///path)",
            )
        prefix = path.endswith("/") and len(path) > 1
        body = path[1:-1] if prefix else path[1:]
        if not body:
            raise StagingError("unsafe_path", f"{label}: the file system root is not a dataset")
        _check_segments(body.split("/"), label, "the path")
        return _Location("file", "/" + body, "", "", prefix)
    if uri.startswith("s3://"):
        bucket, slash, key = uri[len("s3://") :].partition("/")
        if not slash or not _valid_bucket(bucket):
            raise StagingError(
                "unsupported_uri",
                f"{label}: an S3 URI names a bucket and a key or prefix (s3://bucket/key)",
            )
        prefix = key == "" or key.endswith("/")
        if key:
            if key.startswith("/"):
                raise StagingError("unsafe_path", f"{label}: the key starts with '/'")
            _check_segments((key[:-1] if prefix else key).split("/"), label, "the key")
        return _Location("s3", f"{bucket}/{key}", bucket, key, prefix)
    raise StagingError(
        "unsupported_uri", f"{label}: only file:///absolute/path and s3://bucket/key are staged"
    )


def _valid_bucket(name: str) -> bool:
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    return 3 <= len(name) <= 255 and set(name) <= ok and name[0].isalnum() and name[-1].isalnum()


# ------------------------------------------------------------------------------------------
# Sources: what a URI holds, listed, and opened for reading


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative posix path inside a tree; "" for a single object / file
    path: str  # the store's path: "bucket/key" for S3, an absolute path locally
    size: int  # as listed
    ino: int | None = None  # local only: the inode listed (checked when opened)


@dataclass
class _Source:
    loc: _Location
    fs: Any
    tree: bool
    entries: list[_Entry]
    basename: str  # a single file's name (the last segment of its path or key)


def _store_errors(exc: BaseException, label: str) -> StagingError | None:
    """The :class:`StagingError` a store failure means, or None (left to propagate)."""
    if isinstance(exc, StagingError):
        return exc
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return StagingError("not_found", f"{label}: not found")
    if isinstance(exc, PermissionError):
        return StagingError("access_denied", f"{label}: access denied")
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return StagingError("access_denied", f"{label}: no credentials for the store")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return StagingError("unsafe_path", f"{label}: a symbolic link is not followed")
    response = getattr(exc.__cause__, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412"):
            return StagingError(
                "checksum_mismatch", f"{label}: the object changed while it was being read"
            )
    return None


@contextlib.contextmanager
def _translated(label: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = _store_errors(exc, label)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


def _s3_fs(storage_options: Mapping[str, Any] | None) -> Any:
    # A fresh instance every time: fsspec caches instances by their arguments (credentials
    # from the environment are not part of them) and s3fs caches listings; staging must see
    # the store as it is now, with the credentials of now.
    options = {"skip_instance_cache": True, "use_listings_cache": False}
    options.update(storage_options or {})
    return fsspec.filesystem("s3", **options)


def _list(uri: str, storage_options: Mapping[str, Any] | None, label: str) -> _Source:
    loc = _parse(uri, label)
    with _translated(label):
        if loc.scheme == "file":
            return _list_local(loc, label)
        return _list_s3(loc, _s3_fs(storage_options), label)


def _list_local(loc: _Location, label: str) -> _Source:
    fs = fsspec.filesystem("file")
    info = fs.info(loc.path)
    if info.get("islink"):
        raise StagingError("unsafe_path", f"{label}: the source is a symbolic link")
    if info["type"] == "file":
        if loc.prefix:
            raise StagingError("not_found", f"{label}: not a directory")
        entry = _Entry("", loc.path, int(info["size"]), info.get("ino"))
        return _Source(loc, fs, False, [entry], loc.path.rsplit("/", 1)[-1])
    if info["type"] != "directory":
        raise StagingError("unsafe_path", f"{label}: not a regular file or directory")
    entries: list[_Entry] = []
    stack = [(loc.path, "")]
    while stack:
        directory, rel_dir = stack.pop()
        for child in fs.ls(directory, detail=True):
            name = str(child["name"]).rstrip("/").rsplit("/", 1)[-1]
            rel = f"{rel_dir}{name}"
            _relative_parts(rel, label)
            if child.get("islink"):
                raise StagingError(
                    "unsafe_path", f"{label}: {_show(rel)} is a symbolic link (not followed)"
                )
            if child["type"] == "directory":
                stack.append((f"{directory}/{name}", f"{rel}/"))
            elif child["type"] == "file":
                entries.append(
                    _Entry(rel, f"{directory}/{name}", int(child["size"]), child.get("ino"))
                )
            else:
                raise StagingError(
                    "unsafe_path", f"{label}: {_show(rel)} is not a regular file or directory"
                )
    entries.sort(key=lambda e: e.rel)
    return _Source(loc, fs, True, entries, "")


def _list_s3(loc: _Location, fs: Any, label: str) -> _Source:
    if not loc.prefix:
        info = fs.info(loc.path)
        if info.get("type") != "file":
            raise StagingError(
                "not_found", f"{label}: no such object (a prefix is named with a trailing '/')"
            )
        entry = _Entry("", loc.path, int(info["size"]))
        return _Source(loc, fs, False, [entry], loc.key.rsplit("/", 1)[-1])
    entries: list[_Entry] = []
    token: str | None = None
    while True:
        request: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": loc.key}
        if token:
            request["ContinuationToken"] = token
        page = fs.call_s3("list_objects_v2", **request)
        for obj in page.get("Contents", []):
            key, size = str(obj["Key"]), int(obj["Size"])
            rel = key[len(loc.key) :]
            if key.endswith("/") and size == 0:
                continue  # a "folder" marker: no data
            _relative_parts(rel, label)
            entries.append(_Entry(rel, f"{loc.bucket}/{key}", size))
        if not page.get("IsTruncated"):
            break
        token = page.get("NextContinuationToken")
    if not entries:
        raise StagingError("not_found", f"{label}: no objects under the prefix")
    entries.sort(key=lambda e: e.rel)
    files = {e.rel for e in entries}
    for e in entries:
        parts = e.rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise StagingError(
                    "unsafe_path",
                    f"{label}: {_show('/'.join(parts[:i]))} is both an object and a prefix",
                )
    return _Source(loc, fs, True, entries, "")


def _open_local(root: str, entry: _Entry, label: str) -> BinaryIO:
    """Open a listed local file without following any link at or below ``root``."""
    parts = entry.rel.split("/") if entry.rel else []
    fds: list[int] = []
    try:
        if parts:
            fds.append(os.open(root, _OPEN_FLAGS | _NOFOLLOW | _DIRECTORY))
            for part in parts[:-1]:
                fds.append(os.open(part, _OPEN_FLAGS | _NOFOLLOW | _DIRECTORY, dir_fd=fds[-1]))
            fd = os.open(parts[-1], _OPEN_FLAGS | _NOFOLLOW | _NONBLOCK, dir_fd=fds[-1])
        else:
            fd = os.open(root, _OPEN_FLAGS | _NOFOLLOW | _NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            where = _show(entry.rel) if entry.rel else "the source"
            raise StagingError(
                "unsafe_path",
                f"{label}: {where} is a symbolic link or changed while being staged",
            ) from exc
        raise
    finally:
        for d in fds:
            os.close(d)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (entry.ino is not None and st.st_ino != entry.ino):
        os.close(fd)
        where = _show(entry.rel) if entry.rel else "the source"
        raise StagingError("unsafe_path", f"{label}: {where} was replaced while being staged")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def _open(source: _Source, entry: _Entry, label: str) -> BinaryIO:
    with _translated(label):
        if source.loc.scheme == "file":
            return _open_local(source.loc.path, entry, label)
        f: BinaryIO = source.fs.open(entry.path, "rb", cache_type="none", block_size=CHUNK_SIZE)
        return f


def _read(source: _Source, entry: _Entry, sink: BinaryIO | None, label: str) -> tuple[int, str]:
    """Stream one file (into ``sink`` when given); its size and SHA-256 as read."""
    digest = hashlib.sha256()
    size = 0
    where = f"{label} [{_show(entry.rel)}]" if entry.rel else label
    f = _open(source, entry, where)
    try:
        while True:
            with _translated(where):
                chunk = f.read(CHUNK_SIZE)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if sink is not None:
                sink.write(chunk)
    finally:
        with contextlib.suppress(Exception):
            f.close()
    return size, digest.hexdigest()


def _fingerprint_of(tree: bool, rows: list[tuple[str, int, str]]) -> Fingerprint:
    """The fingerprint of files read: (relative path, size, sha256) each."""
    total = sum(size for _, size, _ in rows)
    if not tree:
        (_, size, sha) = rows[0]
        return Fingerprint(size_bytes=size, sha256=sha, files=1)
    digest = hashlib.sha256()
    for line in sorted(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in rows):
        digest.update(line.encode("utf-8"))
    return Fingerprint(size_bytes=total, sha256=digest.hexdigest(), files=len(rows))


def fingerprint(uri: str, storage_options: dict[str, Any] | None = None) -> Fingerprint:
    """The fingerprint of what ``uri`` holds now (read in full, in chunks); see the module doc.

    Raises :class:`StagingError` (not_found, access_denied, unsupported_uri, unsafe_path).
    """
    label = _show(uri)
    source = _list(uri, storage_options, label)
    rows = [(e.rel, *_read(source, e, None, label)) for e in source.entries]
    return _fingerprint_of(source.tree, rows)


# ------------------------------------------------------------------------------------------
# Staging


def _label(item: InputPlan) -> str:
    return f"{item.role} input {_show(item.id)} ({_show(item.uri)})"


def _marker_path(dest: Path, state_dir: Path) -> Path:
    return state_dir / f".{dest.name}.staged.json"


@contextlib.contextmanager
def _locked(dest: Path, state_dir: Path) -> Iterator[None]:
    lock = state_dir / f".{dest.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local_listing(dest: Path) -> dict[str, int] | None:
    """``{relative path: size}`` of a staged copy, or None if it is not a clean one."""
    out: dict[str, int] = {}
    stack = [(dest, "")]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as it:
            for child in it:
                rel = f"{rel_dir}{child.name}"
                if child.is_symlink():
                    return None
                if child.is_dir(follow_symlinks=False):
                    stack.append((Path(child.path), f"{rel}/"))
                    continue
                st = child.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o222:
                    return None
                out[rel] = st.st_size
    return out


def _reusable(item: InputPlan, dest: Path, state_dir: Path) -> Fingerprint | None:
    """The fingerprint of a complete staged copy of ``item`` at ``dest``, or None."""
    try:
        marker = json.loads(_marker_path(dest, state_dir).read_text(encoding="utf-8"))
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            return None
        if (
            marker.get("id") != item.id
            or marker.get("uri") != item.uri
            or (item.sha256 and marker.get("sha256") != item.sha256.lower())
            or (item.size_bytes >= 0 and marker.get("size_bytes") != item.size_bytes)
            or dest.is_symlink()
            or not dest.is_dir()
        ):
            return None
        listing = {str(path): int(size) for path, size in marker["listing"]}
        if _local_listing(dest) != listing:
            return None
        return Fingerprint(int(marker["size_bytes"]), str(marker["sha256"]), int(marker["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                p = Path(root) / d
                if not p.is_symlink():
                    p.chmod(0o700)
        shutil.rmtree(path)


def _clear(dest: Path, state_dir: Path) -> None:
    """Forget a previous copy: its marker first, then the copy and abandoned partial ones."""
    _marker_path(dest, state_dir).unlink(missing_ok=True)
    _remove(dest)
    partial = f".{dest.name}.partial-"
    for sibling in dest.parent.iterdir():
        if sibling.name.startswith(partial):
            _remove(sibling)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _OPEN_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(dest: Path, state_dir: Path, marker: dict[str, Any]) -> None:
    path = _marker_path(dest, state_dir)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(marker, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(state_dir)


def _check(item: InputPlan, got: Fingerprint, label: str) -> None:
    if item.size_bytes >= 0 and got.size_bytes != item.size_bytes:
        raise StagingError(
            "size_mismatch",
            f"{label}: {got.size_bytes} bytes read, {item.size_bytes} registered; "
            "the data changed since it was registered",
        )
    if item.sha256 and got.sha256 != item.sha256.lower():
        raise StagingError(
            "checksum_mismatch",
            f"{label}: SHA-256 {got.sha256[:16]}... read, {_show(item.sha256)[:16]}... "
            "registered; the data changed since it was registered",
        )


def _record(item: InputPlan, dest: Path, fp: Fingerprint, reused: bool) -> dict[str, Any]:
    return {
        "id": item.id,
        "name": item.name,
        "role": item.role,
        "uri": item.uri,
        "sha256": fp.sha256,
        "size_bytes": fp.size_bytes,
        "files": fp.files,
        "local_path": str(dest),
        "reused": reused,
    }


def stage_input(
    item: InputPlan,
    dest: Path,
    storage_options: dict[str, Any] | None = None,
    *,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """Copy ``item`` into ``dest`` and prove it is what was registered; see the module doc.

    A single file becomes ``dest/<basename>``; a directory or prefix keeps its layout under
    ``dest``. Returns ``{"id", "name", "role", "uri", "sha256", "size_bytes", "files",
    "local_path", "reused"}`` (``local_path`` is ``dest``; ``reused`` when a complete copy was
    already there and nothing was read). Raises :class:`StagingError`; on any failure nothing
    is left at ``dest``.

    The marker (``.<dest name>.staged.json``) and a lock file go to ``state_dir``, by default
    ``dest``'s parent; :func:`stage_plan` keeps them out of the job's role directories.

    An item registered without a fingerprint (``sha256 == ""``, ``size_bytes == -1``: an
    ``s3://`` dataset nobody has read yet) is staged as the store holds it, and the record is
    what the caller pins; either part given alone is still checked.
    """
    dest = Path(dest)
    label = _label(item)
    state = Path(state_dir) if state_dir is not None else dest.parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    with _locked(dest, state):
        reused = _reusable(item, dest, state)
        if reused is not None:
            return _record(item, dest, reused, reused=True)
        _clear(dest, state)
        source = _list(item.uri, storage_options, label)
        listed = sum(e.size for e in source.entries)
        if item.size_bytes >= 0 and listed != item.size_bytes:  # before downloading anything
            raise StagingError(
                "size_mismatch",
                f"{label}: the store holds {listed} bytes, {item.size_bytes} registered; "
                "the data changed since it was registered",
            )
        tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            rows: list[tuple[str, int, str]] = []
            listing: list[tuple[str, int]] = []
            for entry in source.entries:
                rel = entry.rel or source.basename
                target = tmp.joinpath(*_relative_parts(rel, label))
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:
                    size, sha = _read(source, entry, out, label)
                    out.flush()
                    os.fsync(out.fileno())
                target.chmod(0o444)
                rows.append((entry.rel, size, sha))
                listing.append((rel, size))
            fp = _fingerprint_of(source.tree, rows)
            _check(item, fp, label)
            os.replace(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise
        _fsync_dir(dest.parent)
        _write_marker(
            dest,
            state,
            {
                "format": MARKER_FORMAT,
                "id": item.id,
                "uri": item.uri,
                "sha256": fp.sha256,
                "size_bytes": fp.size_bytes,
                "files": fp.files,
                "listing": sorted(listing),
            },
        )
    return _record(item, dest, fp, reused=False)


def plan_items(plan: ExecutionPlan) -> list[InputPlan]:
    """What a plan stages, in order: its inputs, then the model's and the teacher's
    weights and adapter."""
    items = list(plan.inputs)
    for model in (plan.model, plan.teacher):
        if model is not None:
            items += [x for x in (model.weights, model.adapter) if x is not None]
    return items


def stage_plan(
    plan: ExecutionPlan, storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Stage every input of ``plan`` to ``staged_path(plan, item)``; the records in order.

    Each destination must resolve to ``<plan.dirs.inputs>/<role>/<id>`` (``unsafe_path``
    otherwise: outside the inputs, through a link elsewhere, or an id such as ``..``).
    Markers and locks go to ``<inputs>/.staging/<role>/``, never into a role directory a job
    reads (``inputs/data`` is read recursively).
    Stops at the first :class:`StagingError`; inputs already staged stay staged (reused by a
    retry).
    """
    inputs = Path(plan.dirs.inputs)
    if not inputs.is_absolute():
        raise StagingError("unsafe_path", f"job {plan.job_id}: the input directory is relative")
    root = inputs.resolve()
    records = []
    for item in plan_items(plan):
        dest = staged_path(plan, item)
        resolved = dest.resolve()
        if not resolved.is_relative_to(root):
            raise StagingError(
                "unsafe_path",
                f"{_label(item)}: its staging path {_show(str(dest))} is outside {root}",
            )
        parts = resolved.relative_to(root).parts
        if len(parts) != 2 or any(p.startswith(".") for p in parts):
            raise StagingError(
                "unsafe_path",
                f"{_label(item)}: its staging path {_show(str(dest))} is not {root}/<role>/<id>",
            )
        state = root / STATE_DIR / parts[0]
        records.append(stage_input(item, resolved, storage_options, state_dir=state))
    return records


def storage_options_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """s3fs options from the environment: ``NURI_S3_ENDPOINT_URL`` (an S3-compatible endpoint).

    Credentials are not read here: s3fs (botocore) takes them from the standard ``AWS_*``
    variables, profile or instance role.
    """
    endpoint = (env.get(ENDPOINT_ENV) or "").strip()
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


__all__ = [
    "CHUNK_SIZE",
    "ERROR_CODES",
    "Fingerprint",
    "StagingError",
    "fingerprint",
    "plan_items",
    "stage_input",
    "stage_plan",
    "storage_options_from_env",
]
