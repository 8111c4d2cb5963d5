"""Artifact downloads: short-lived opaque references and the content behind them.

``download`` answers a reference (HMAC-signed, bound to the artifact, the caller's user and
token, five minutes), never a server path; ``fetch`` streams what it names (a file as itself,
a directory as a tar built on the fly) after checking the reference, the token, visibility
and the access policy again. Nothing that is a link, a special file or a hard link is ever
served: a job could plant one to reach the database or the signing key.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from controlplane.auth import Origin, Principal, authenticate_token_id
from controlplane.db.models import Artifact
from controlplane.errors import Conflict, Forbidden, NotFound, NuriError, Unauthenticated
from controlplane.services.artifacts import (
    _audit_read,
    _denied,
    _read_decision,
    public_location,
    visible,
)


def download(
    session: Session, caller: Principal, art_id: str, now: datetime, ref_key: bytes
) -> dict[str, Any]:
    """A short-lived link to the artifact's content (access policy checked, audited).

    The answer never holds a server path: ``href`` is ``/v1/artifacts/{id}/content?ref=...``,
    a reference signed with ``ref_key`` (:func:`ref_key`), bound to the artifact and to the
    caller's user and token, valid for :data:`REF_TTL`.
    """
    art = visible(session, caller, art_id)
    decision = _read_decision(session, caller, art)
    outcome = "success" if decision.allowed else "denied"
    _audit_read(session, caller, art, "artifact.download", now, outcome, decision.to_dict())
    if not decision.allowed:
        raise _denied(art, decision)
    expires_at = (now + REF_TTL).replace(microsecond=0)
    ref = make_ref(ref_key, art.id, caller.user_id, caller.token_id, expires_at)
    size = (art.provenance or {}).get("size_bytes")
    return {
        "artifact_id": art.id,
        "name": art.name,
        "kind": art.kind,
        "sha256": art.sha256,
        "size_bytes": size if isinstance(size, int) else None,
        "href": f"/v1/artifacts/{quote(art.id, safe='')}/content?ref={ref}",
        "expires_at": expires_at,
    }


# --- where an artifact lies, as a member may see it ---------------------------------------


REF_TTL = timedelta(minutes=5)
_REF_MAX_LEN = 2048


def ref_key(signing_key: Ed25519PrivateKey) -> bytes:
    """The HMAC-SHA256 key of download references, derived from the audit signing key (so
    it survives restarts and is the same in every API worker, with nothing new to store)."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(b"nuri-artifact-ref:" + raw).digest()


@dataclass(frozen=True, slots=True)
class RefClaims:
    """What a valid download reference says: who may fetch which artifact until when."""

    artifact_id: str
    user_id: str
    token_id: str
    expires_at: datetime


class InvalidReference(Forbidden):
    """A download reference that is malformed, tampered with, expired or not the caller's.

    One answer for every case, which says nothing of whether the artifact exists.
    """

    code = "invalid_reference"

    def __init__(self) -> None:
        super().__init__(
            "this download link is invalid or has expired; "
            "ask GET /v1/artifacts/{id}/download for a new one"
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ref_mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"nuri-artifact-ref.v1\n" + payload, hashlib.sha256).digest()


def make_ref(key: bytes, art_id: str, user_id: str, token_id: str, expires_at: datetime) -> str:
    """An opaque reference: ``<payload>.<HMAC-SHA256 of it>``, both base64url."""
    payload = json.dumps(
        {"a": art_id, "u": user_id, "t": token_id, "e": int(expires_at.timestamp())},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    return f"{_b64(payload)}.{_b64(_ref_mac(key, payload))}"


def check_ref(key: bytes, art_id: str, ref: str, now: datetime) -> RefClaims:
    """The claims of ``ref`` if it is authentic (compared in constant time), unexpired and
    for ``art_id``; anything else is :class:`InvalidReference`."""
    if not ref or len(ref) > _REF_MAX_LEN or ref.count(".") != 1:
        raise InvalidReference()
    body, _, mac = ref.partition(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise InvalidReference() from None
    if not hmac.compare_digest(given, _ref_mac(key, payload)):
        raise InvalidReference()
    try:
        claims = json.loads(payload)
        art, user, token, exp = claims["a"], claims["u"], claims["t"], claims["e"]
    except (ValueError, KeyError, TypeError):
        raise InvalidReference() from None
    if not all(isinstance(v, str) for v in (art, user, token)) or not isinstance(exp, int):
        raise InvalidReference()
    if art != art_id or now.timestamp() >= exp:
        raise InvalidReference()
    return RefClaims(art, user, token, datetime.fromtimestamp(exp, UTC))


# --- content --------------------------------------------------------------------------------


class ContentMissing(NuriError):
    status_code = 404
    code = "content_missing"


class NotServed(Conflict):
    code = "not_served"


class UnsafeContent(Conflict):
    code = "unsafe_content"


_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,16}$")


@dataclass(frozen=True, slots=True)
class _Entry:
    """One file or directory of an artifact, as listed before anything is sent."""

    rel: str  # POSIX path relative to the artifact ("" for a single-file artifact)
    is_dir: bool
    size: int
    mtime: int
    mode: int
    dev: int
    ino: int


def _open_beneath(base: Path, parts: Sequence[str]) -> int:
    """Open ``base/parts...`` without following a link below ``base``. The caller closes it."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_rel(fd, parts)
    finally:
        os.close(fd)


def _open_rel(dir_fd: int, parts: Sequence[str]) -> int:
    """Open ``parts`` below the directory ``dir_fd``, each component relative to its parent
    with ``O_NOFOLLOW``: a link anywhere on the way is an ``OSError`` (ELOOP or ENOTDIR)."""
    fd = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _translate(art_id: str, exc: OSError) -> NuriError:
    """An ``OSError`` as an error a client may see: never the path, nor the OS message."""
    details: dict[str, Any] = {"artifact_id": art_id}
    if exc.errno == errno.ENOENT:
        return ContentMissing(
            f"the content of artifact {art_id} is no longer stored by Nuri", details=details
        )
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeContent(
            f"artifact {art_id} is not served: its path holds a symbolic link", details=details
        )
    return NotServed(f"artifact {art_id} cannot be read by Nuri", details=details)


def _is_unsafe(st: os.stat_result) -> str | None:
    """Why ``st`` may not be served (None if it may): only directories and regular files
    with no other hard link (a link to a file outside the artifact, e.g. the database)."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return "a special file"
    if st.st_nlink != 1:
        return "a hard link"
    return None


@dataclass(frozen=True, slots=True)
class Content:
    """What ``GET /v1/artifacts/{id}/content`` sends: a single file as itself, a directory as
    a tar archive (built while it is sent). Everything was listed and checked before the
    answer starts; :meth:`chunks` opens each file again without following links and stops
    the transfer if anything changed since."""

    artifact_id: str
    filename: str
    media_type: str
    length: int
    base: Path
    parts: tuple[str, ...]
    root: _Entry
    entries: tuple[_Entry, ...] = ()
    headers: tuple[bytes, ...] = ()

    @property
    def is_archive(self) -> bool:
        return self.root.is_dir

    def chunks(self) -> Iterator[bytes]:
        fd = _open_beneath(self.base, self.parts)
        try:
            self._same(fd, self.root)
            if not self.is_archive:
                yield from self._file(fd, self.root)
                return
            sent = 0
            for entry, header in zip(self.entries, self.headers, strict=True):
                yield header
                sent += len(header)
                if entry.is_dir:
                    continue
                rel = entry.rel.split("/")
                try:
                    ffd = _open_rel(fd, rel)
                except OSError as exc:
                    raise RuntimeError(f"artifact {self.artifact_id} changed while sent") from exc
                try:
                    self._same(ffd, entry)
                    yield from self._file(ffd, entry)
                finally:
                    os.close(ffd)
                pad = -entry.size % tarfile.BLOCKSIZE
                sent += entry.size + pad
                if pad:
                    yield tarfile.NUL * pad
            yield _tar_end(sent)
        finally:
            os.close(fd)

    def _same(self, fd: int, entry: _Entry) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino) or _is_unsafe(st) is not None:
            raise RuntimeError(f"artifact {self.artifact_id} changed while being sent")
        if not entry.is_dir and st.st_size != entry.size:
            raise RuntimeError(f"artifact {self.artifact_id} changed while being sent")

    def _file(self, fd: int, entry: _Entry) -> Iterator[bytes]:
        os.set_blocking(fd, True)
        left = entry.size
        while left:
            data = os.read(fd, min(_CHUNK, left))
            if not data:
                raise RuntimeError(f"artifact {self.artifact_id} shrank while being sent")
            left -= len(data)
            yield data


def _tar_end(offset: int) -> bytes:
    """The end of a tar archive after ``offset`` bytes: two zero blocks, then zeros up to a
    whole record (what ``tarfile`` writes on close)."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))


def _entry(rel: str, st: os.stat_result) -> _Entry:
    return _Entry(
        rel=rel,
        is_dir=stat.S_ISDIR(st.st_mode),
        size=0 if stat.S_ISDIR(st.st_mode) else st.st_size,
        mtime=int(st.st_mtime),
        mode=0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o644,
        dev=st.st_dev,
        ino=st.st_ino,
    )


def _list_tree(art_id: str, root_fd: int) -> list[_Entry]:
    """Every directory and file below the artifact's root (opened as ``root_fd``), sorted;
    a link or a special file anywhere refuses the whole artifact (nothing is followed)."""
    entries: list[_Entry] = []

    def fail(exc: OSError) -> None:
        raise exc

    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(
            ".", dir_fd=root_fd, follow_symlinks=False, onerror=fail
        ):
            prefix = "" if dirpath == "." else dirpath.removeprefix("./") + "/"
            for name in [*dirnames, *filenames]:
                rel = prefix + name
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                why = _is_unsafe(st)
                if why is not None:
                    raise UnsafeContent(
                        f"artifact {art_id} is not served: {rel!r} is {why}",
                        details={"artifact_id": art_id, "entry": rel},
                    )
                entries.append(_entry(rel, st))
    except OSError as exc:
        raise _translate(art_id, exc) from None
    entries.sort(key=lambda e: e.rel)
    return entries


def _tar_header(entry: _Entry) -> bytes:
    info = tarfile.TarInfo(entry.rel)
    info.type = tarfile.DIRTYPE if entry.is_dir else tarfile.REGTYPE
    info.size = entry.size
    info.mtime = entry.mtime
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _download_name(art: Artifact, suffix: str) -> str:
    name = art.name or art.id
    if suffix and not name.endswith(suffix):
        name += suffix
    return name


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` (RFC 6266; non-ASCII as ``filename*``)."""
    quoted = quote(filename, safe="")
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"


def prepare_content(art: Artifact, jobs_dir: Path) -> Content:
    """Check and list what ``art`` holds, before anything is sent.

    Only ``file://`` artifacts inside the member's job area (``<jobs_dir>/<member id>/``)
    are served; no link is followed at or below it. Errors name the artifact, never a path.
    """
    loc = urlsplit(art.uri)
    if loc.scheme.lower() != "file":
        raise NotServed(
            f"artifact {art.id} is not stored by Nuri; fetch it from its location",
            details={"artifact_id": art.id, "location": public_location(art.uri)},
        )
    path = PurePosixPath(unquote(loc.path))
    base = jobs_dir / art.member_id
    try:
        rel = path.relative_to(PurePosixPath(base))
    except ValueError:
        rel = None
    if (
        loc.netloc not in ("", "localhost")
        or rel is None
        or not rel.parts
        or any(p in ("", ".", "..") for p in rel.parts)
    ):
        raise NotServed(
            f"artifact {art.id} is not in Nuri's job area and is not served",
            details={"artifact_id": art.id},
        )
    parts = rel.parts
    try:
        fd = _open_beneath(base, parts)
    except OSError as exc:
        raise _translate(art.id, exc) from None
    try:
        st = os.fstat(fd)
        why = _is_unsafe(st)
        if why is not None:
            raise UnsafeContent(
                f"artifact {art.id} is not served: it is {why}", details={"artifact_id": art.id}
            )
        root = _entry("", st)
        if not root.is_dir:
            suffix = PurePosixPath(parts[-1]).suffix
            return Content(
                artifact_id=art.id,
                filename=_download_name(art, suffix if _SUFFIX.match(suffix) else ""),
                media_type="application/octet-stream",
                length=root.size,
                base=base,
                parts=parts,
                root=root,
            )
        entries = _list_tree(art.id, fd)
    finally:
        os.close(fd)
    headers = tuple(_tar_header(e) for e in entries)
    body = sum(
        len(h) + e.size + (-e.size % tarfile.BLOCKSIZE)
        for h, e in zip(headers, entries, strict=True)
    )
    return Content(
        artifact_id=art.id,
        filename=_download_name(art, ".tar"),
        media_type="application/x-tar",
        length=body + len(_tar_end(body)),
        base=base,
        parts=parts,
        root=root,
        entries=tuple(entries),
        headers=headers,
    )


def fetch(
    session: Session,
    key: bytes,
    art_id: str,
    ref: str,
    now: datetime,
    jobs_dir: Path,
    touch_interval_s: float,
    origin: Origin,
) -> Content:
    """The content behind a download link (``ref`` from :func:`download`), checked and
    audited (``artifact.fetch``) before anything is sent.

    The reference must be authentic, unexpired and for this artifact; its token must still
    be valid and its user still see the artifact, and the access policy still allow the
    read. Every failure of the reference itself is the same 403 ``invalid_reference``.
    """
    claims = check_ref(key, art_id, ref, now)
    try:
        caller = authenticate_token_id(session, claims.token_id, now, touch_interval_s, origin)
        if caller.user_id != claims.user_id:
            raise InvalidReference()
        art = visible(session, caller, art_id)
    except (Unauthenticated, NotFound):
        raise InvalidReference() from None
    decision = _read_decision(session, caller, art)
    if not decision.allowed:
        _audit_read(session, caller, art, "artifact.fetch", now, "denied", decision.to_dict())
        raise _denied(art, decision)
    try:
        content = prepare_content(art, jobs_dir)
    except NuriError as exc:
        _audit_read(session, caller, art, "artifact.fetch", now, "failure", {"error": exc.code})
        raise
    details = {
        "format": "tar" if content.is_archive else "file",
        "size_bytes": content.length,
        "sha256": art.sha256,
        "expires_at": claims.expires_at.isoformat(),
        **decision.to_dict(),
    }
    _audit_read(session, caller, art, "artifact.fetch", now, "success", details)
    return content
