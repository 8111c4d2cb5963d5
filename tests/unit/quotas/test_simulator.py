"""Trace parsing, replay cluster setup and the event-driven simulator."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from quotas.replay_setup import build_cluster, parse_quota_mapping, split_by_demand
from quotas.simulator import SimulationConfig, jain_index, percentile, simulate
from quotas.traces import (
    TENANTS,
    TraceError,
    TraceJob,
    derive_tenant,
    read_generic_csv,
    read_itp_archive,
    read_itp_csv,
)

ITP = (
    Path(__file__).resolve().parents[4]
    / "shared"
    / "traces"
    / "elasticflow-itp"
    / "raw-traces.tar.gz"
)


def test_tenants_are_deterministic_and_skewed() -> None:
    ids = [f"job-{i}" for i in range(20_000)]
    first = [derive_tenant(i) for i in ids]
    assert first == [derive_tenant(i) for i in ids]
    counts = Counter(first)
    names = [name for name, _ in TENANTS]
    assert set(counts) == set(names)
    assert counts[names[0]] > 5 * counts[names[-1]]  # Zipf 1/k: about 10x
    assert [derive_tenant(i, seed=1) for i in ids[:50]] != first[:50]


def test_itp_csv_parses_and_rejects_a_bad_header() -> None:
    text = "job_id,submission_time,duration,num_gpu\na,10,100,8\nb,20,5,1\n"
    jobs = read_itp_csv(io.StringIO(text), "cluster99")
    assert [(j.job_id, j.submit_time, j.duration, j.gpus, j.pool) for j in jobs] == [
        ("a", 10.0, 100.0, 8, "cluster99"),
        ("b", 20.0, 5.0, 1, "cluster99"),
    ]
    with pytest.raises(TraceError) as err:
        read_itp_csv(io.StringIO("id,when\n1,2\n"), "x")
    assert err.value.code == "bad_format"
    with pytest.raises(TraceError) as err:
        read_itp_csv(io.StringIO("job_id,submission_time,duration,num_gpu\na,x,1,1\n"), "x")
    assert err.value.code == "bad_value"


def test_itp_archive_from_bytes_and_garbage() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"job_id,submission_time,duration,num_gpu\nj1,0,60,2\n"
        info = tarfile.TarInfo("cluster07.csv")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    (job,) = read_itp_archive(buffer)
    assert (job.pool, job.gpus) == ("cluster07", 2)
    with pytest.raises(TraceError):
        read_itp_archive(io.BytesIO(b"not a tarball"))


def test_generic_csv() -> None:
    text = "submit_time,duration,num_gpus,tenant\n0,60,2,univ\n5,30,16,telco\n"
    jobs = read_generic_csv(io.StringIO(text))
    assert [(j.tenant, j.gpus, j.pool) for j in jobs] == [
        ("univ", 2, "default"),
        ("telco", 16, "default"),
    ]
    with pytest.raises(TraceError) as err:
        read_generic_csv(io.StringIO("submit_time,duration\n1,2\n"))
    assert err.value.code == "bad_format"


@pytest.mark.skipif(not ITP.exists(), reason="shared ITP traces not present")
def test_the_real_itp_archive() -> None:
    with ITP.open("rb") as stream:
        jobs = read_itp_archive(stream)
    assert len(jobs) == 69_351
    assert len({j.pool for j in jobs}) == 10


def trace(*rows: tuple[float, float, int, str]) -> list[TraceJob]:
    return [TraceJob(f"j{i:03d}", t, d, g, who, "pool") for i, (t, d, g, who) in enumerate(rows)]


def test_cluster_capacity_and_quotas_follow_demand() -> None:
    jobs = trace((0, 3600, 8, "a"), (0, 3600, 8, "a"), (0, 3600, 8, "b"), (100, 3600, 64, "a"))
    cluster = build_cluster(jobs, nodes_per_domain=4)
    capacity = cluster.capacity("pool")
    assert capacity >= 64  # the largest job fits
    nominal = {m.name: m.quotas["pool"].nominal for m in cluster.members}
    assert sum(nominal.values()) == capacity
    assert nominal["a"] > nominal["b"]
    doubled = build_cluster(jobs, capacity_scale=2.0)
    assert doubled.capacity("pool") == 2 * capacity
    assert split_by_demand({"x": 1.0, "y": 1.0, "z": 1.0}, 10) == {"x": 4, "y": 3, "z": 3}


def test_quota_mapping() -> None:
    plans = parse_quota_mapping(
        {"members": {"a": {"share": 0.75, "borrowing_limit": 0}, "b": {"nominal": {"pool": 4}}}}
    )
    jobs = trace((0, 3600, 8, "a"), (0, 3600, 8, "b"), (0, 3600, 8, "c"))
    cluster = build_cluster(jobs, plans=plans)
    quotas = {m.name: m.quotas["pool"] for m in cluster.members}
    capacity = cluster.capacity("pool")
    assert quotas["a"].nominal == int(capacity * 0.75)
    assert quotas["a"].borrowing_limit == 0
    assert quotas["b"].nominal == 4
    assert quotas["c"].nominal == capacity - quotas["a"].nominal - 4
    for bad in ({}, {"members": {"a": {"shares": 1}}}, {"members": {"a": {"nominal": 3}}}):
        with pytest.raises(TraceError):
            parse_quota_mapping(bad)


def guarantee_trace() -> list[TraceJob]:
    # Borrower "b" floods an idle cluster with long jobs; owner "a" arrives later.
    rows = [(float(i), 20_000.0, 8, "b") for i in range(8)]
    rows += [(5_000.0 + i, 3_000.0, 8, "a") for i in range(3)]
    return trace(*rows)


def guarantee_cluster():  # type: ignore[no-untyped-def]
    plans = parse_quota_mapping({"members": {"a": {"share": 0.5}, "b": {"share": 0.5}}})
    return build_cluster(guarantee_trace(), target_load=1.0, plans=plans)


@pytest.mark.parametrize("policy", ["nuri", "fifo", "drf"])
def test_every_policy_completes_the_trace(policy: str) -> None:
    jobs = guarantee_trace()
    result = simulate(jobs, guarantee_cluster(), SimulationConfig(policy=policy))  # type: ignore[arg-type]
    assert (result.completed, result.unfinished) == (len(jobs), 0)
    assert 0 < result.utilisation <= 1
    assert 0 < result.jain_fairness <= 1


def test_nuri_reclaims_for_the_owner_and_baselines_do_not() -> None:
    jobs, cluster = guarantee_trace(), guarantee_cluster()
    nuri = simulate(jobs, cluster, SimulationConfig(policy="nuri", checkpoint_interval=600))
    fifo = simulate(jobs, cluster, SimulationConfig(policy="fifo"))
    # Nine nodes: b borrows eight, a's first job takes the ninth, the next two need reclaim.
    assert nuri.in_quota_jobs >= 3
    assert nuri.quota_violations == 0
    assert nuri.preemptions >= 2
    assert nuri.gpu_hours_lost > 0
    assert fifo.quota_violations == 2 and fifo.preemptions == 0
    owner = dict(nuri.per_member)["a"]
    assert owner.mean_wait <= 120 + 1


def test_simulation_is_deterministic_and_reports_progress() -> None:
    jobs, cluster = guarantee_trace(), guarantee_cluster()
    seen: list[tuple[int, int]] = []
    first = simulate(jobs, cluster, SimulationConfig(), progress=lambda d, t: seen.append((d, t)))
    assert first == simulate(jobs, cluster, SimulationConfig())
    assert seen[-1] == (len(jobs), len(jobs))


def test_metrics_helpers() -> None:
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert percentile([], 95) == 0.0
    assert jain_index([1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0]) == pytest.approx(1 / 3)
