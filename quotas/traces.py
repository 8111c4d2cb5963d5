"""Job traces for the simulator: parsing only. Callers open files and pass streams in.

Formats:

* ``itp`` -- the Microsoft ITP traces published with ElasticFlow (``raw-traces.tar.gz``: ten
  CSVs ``clusterNN.csv`` with header ``job_id,submission_time,duration,num_gpu``, seconds).
  Each CSV is one cluster and becomes one pool named after it (``cluster01`` ...). The
  traces have no tenant column, so tenants are derived deterministically: the first 8 bytes
  of ``sha256(f"{seed}:{job_id}")`` as a fraction in [0, 1) pick one of the ten
  :data:`TENANTS` by cumulative weight. The weights are Zipf-like (``1/k``, k = 1..10), so
  ``telco-1`` submits about 34 % of the jobs and ``startup-2`` about 3 %: a skewed consortium.
* ``csv`` -- a generic CSV with header ``submit_time,duration,num_gpus,tenant`` (seconds;
  optional ``job_id`` and ``pool`` columns; pool defaults to ``default``).

Malformed input raises :class:`TraceError` with a stable ``code``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

TENANTS: tuple[tuple[str, float], ...] = tuple(
    (name, 1.0 / (k + 1))
    for k, name in enumerate(
        (
            "telco-1",
            "telco-2",
            "chips-1",
            "univ-1",
            "institute-1",
            "univ-2",
            "chips-2",
            "institute-2",
            "startup-1",
            "startup-2",
        )
    )
)
ITP_HEADER = ("job_id", "submission_time", "duration", "num_gpu")
CSV_REQUIRED = ("submit_time", "duration", "num_gpus", "tenant")


class TraceError(ValueError):
    """A trace that cannot be read; ``code`` is stable (``bad_format``, ``bad_value``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace: when it arrived, how long it really ran, on how many GPUs."""

    job_id: str
    submit_time: float
    duration: float
    gpus: int
    tenant: str
    pool: str


def derive_tenant(
    job_id: str, seed: int = 0, tenants: tuple[tuple[str, float], ...] = TENANTS
) -> str:
    """Deterministic tenant of a job: seeded SHA-256 of its id, picked by skewed weights."""
    digest = hashlib.sha256(f"{seed}:{job_id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(w for _, w in tenants)
    acc = 0.0
    for name, weight in tenants:
        acc += weight / total
        if fraction < acc:
            return name
    return tenants[-1][0]


def read_itp_csv(lines: Iterable[str], cluster: str, seed: int = 0) -> list[TraceJob]:
    """Parse one ITP cluster CSV (text lines) into jobs of pool ``cluster``."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != ITP_HEADER:
        raise TraceError(
            "bad_format", f"{cluster}: expected header {','.join(ITP_HEADER)}, got {header}"
        )
    jobs = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            job_id, submit, duration, gpus = row[0], float(row[1]), float(row[2]), int(row[3])
        except (ValueError, IndexError) as exc:
            raise TraceError("bad_value", f"{cluster} line {line_no}: {exc}") from exc
        jobs.append(TraceJob(job_id, submit, duration, gpus, derive_tenant(job_id, seed), cluster))
    return jobs


def read_itp_archive(stream: IO[bytes], seed: int = 0) -> list[TraceJob]:
    """Parse the ElasticFlow ITP ``raw-traces.tar.gz`` (an open binary stream)."""
    jobs: list[TraceJob] = []
    try:
        with tarfile.open(fileobj=stream, mode="r:gz") as archive:
            members = sorted(
                (m for m in archive.getmembers() if m.isfile() and m.name.endswith(".csv")),
                key=lambda m: m.name,
            )
            if not members:
                raise TraceError("bad_format", "no cluster CSVs in the ITP archive")
            for member in members:
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                cluster = member.name.rsplit("/", 1)[-1].removesuffix(".csv")
                text = io.TextIOWrapper(handle, encoding="utf-8")
                jobs.extend(read_itp_csv(text, cluster, seed))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TraceError("bad_format", f"not a readable tar.gz ITP archive: {exc}") from exc
    return jobs


def read_generic_csv(lines: Iterable[str]) -> list[TraceJob]:
    """Parse a generic ``submit_time,duration,num_gpus,tenant[,job_id][,pool]`` CSV."""
    reader = csv.DictReader(lines)
    fields = [f.strip() for f in reader.fieldnames or []]
    missing = [c for c in CSV_REQUIRED if c not in fields]
    if missing:
        raise TraceError("bad_format", f"CSV header lacks {', '.join(missing)}")
    jobs = []
    for line_no, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            job = TraceJob(
                row.get("job_id") or f"job-{line_no - 1:06d}",
                float(row["submit_time"]),
                float(row["duration"]),
                int(row["num_gpus"]),
                row["tenant"],
                row.get("pool") or "default",
            )
        except (ValueError, KeyError) as exc:
            raise TraceError("bad_value", f"line {line_no}: {exc}") from exc
        if job.gpus <= 0 or job.duration < 0 or not job.tenant:
            raise TraceError("bad_value", f"line {line_no}: needs gpus > 0, duration >= 0, tenant")
        jobs.append(job)
    return jobs
