"""``nuri simulate`` as a typer command (registered on a local app, as main.py will)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from controlplane.cli.simulate import simulate

app = typer.Typer()
app.command()(simulate)
runner = CliRunner()

CSV = "submit_time,duration,num_gpus,tenant\n" + "".join(
    f"{i * 10},{3600 + i},{1 + i % 8},{'ab'[i % 2]}\n" for i in range(40)
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_report_for_several_policies(tmp_path: Path) -> None:
    trace = write(tmp_path, "t.csv", CSV)
    result = runner.invoke(
        app, ["--trace", str(trace), "--format", "csv", "--policy", "nuri,fifo,drf", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["policy"] for r in report] == ["nuri", "fifo", "drf"]
    for item in report:
        assert item["completed"] == 40
        assert set(item["per_member"]) == {"a", "b"}


def test_table_with_quota_file_and_limit(tmp_path: Path) -> None:
    trace = write(tmp_path, "t.csv", CSV)
    quotas = write(tmp_path, "q.yaml", "members:\n  a: {share: 0.5}\n  b: {share: 0.5}\n")
    result = runner.invoke(
        app,
        [
            "--trace",
            str(trace),
            "--format",
            "csv",
            "--quotas",
            str(quotas),
            "--limit",
            "10",
            "--members",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "10/10" in result.output
    assert "per member" in result.output


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["--trace", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "not found" in missing.output
    trace = write(tmp_path, "t.csv", CSV)
    bad_format = runner.invoke(app, ["--trace", str(trace), "--format", "xml"])
    assert bad_format.exit_code == 2 and "unknown --format" in bad_format.output
    not_itp = runner.invoke(app, ["--trace", str(trace), "--format", "itp"])
    assert not_itp.exit_code == 2 and "cannot read" in not_itp.output
    bad_csv = write(tmp_path, "bad.csv", "when,what\n1,2\n")
    result = runner.invoke(app, ["--trace", str(bad_csv), "--format", "csv"])
    assert result.exit_code == 2 and "bad_format" in result.output
    bad_policy = runner.invoke(app, ["--trace", str(trace), "--format", "csv", "--policy", "lifo"])
    assert bad_policy.exit_code == 2 and "unknown --policy" in bad_policy.output


def test_pools_replayed_in_worker_processes_give_the_same_report(tmp_path: Path) -> None:
    """``--workers`` runs the independent pools in processes; the numbers must not change."""
    rows = "".join(
        f"{i * 7},{1800 + 37 * i},{1 + i % 8},{'abc'[i % 3]},j{i},{('p1', 'p2', 'p3')[i % 3]}\n"
        for i in range(90)
    )
    trace = write(
        tmp_path, "pools.csv", "submit_time,duration,num_gpus,tenant,job_id,pool\n" + rows
    )
    reports = []
    for workers in ("1", "3"):
        result = runner.invoke(
            app,
            [
                *("--trace", str(trace), "--format", "csv"),
                *("--policy", "nuri,drf", "--json", "--workers", workers),
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        for item in report:
            del item["wall_seconds"]
        reports.append(report)
    assert reports[0] == reports[1]
    assert [r["completed"] for r in reports[1]] == [90, 90]
    bad = runner.invoke(app, ["--trace", str(trace), "--format", "csv", "--workers", "-1"])
    assert bad.exit_code == 2 and "--workers" in bad.output
