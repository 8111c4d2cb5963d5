"""`nuri submit` and `nuri jobs list|get|cancel|events|logs|watch|wait`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.live import Live
from rich.table import Table

from controlplane.cli.session import (
    api_errors,
    call,
    client,
    console,
    emit,
    err_console,
    fail,
    parse_duration,
    progress,
)
from controlplane.client import TERMINAL_STATUSES, NuriConnectionError

jobs_app = typer.Typer(help="Follow and manage your member's jobs.", no_args_is_help=True)
artifacts_app = typer.Typer(help="What your member's jobs wrote.", no_args_is_help=True)

JOB_COLUMNS = [
    "id",
    "name",
    "kind",
    "model",
    "gpus",
    "priority_class",
    "status",
    "pool",
    "created_at",
]


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", code=2)
    except yaml.YAMLError as exc:
        fail(f"{path} is not valid YAML: {exc}", code=2)
    if not isinstance(data, dict):
        fail(f"{path} must hold a mapping of job fields", code=2)
    return data


def _knobs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values read as JSON where they parse (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(f"--set takes key=value, got {pair!r}", code=2)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def submit(
    spec_file: Annotated[Path | None, typer.Option("--file", "-f", help="YAML job spec")] = None,
    kind: Annotated[
        str | None, typer.Option(help="finetune|lora|distill|inference|pretrain")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="base model (axk1, ...) or model dataset")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="total GPUs")] = None,
    nodes: Annotated[int | None, typer.Option(help="nodes (gang)")] = None,
    gpus_per_node: Annotated[int | None, typer.Option()] = None,
    pool: Annotated[list[str] | None, typer.Option(help="allowed pool (repeatable)")] = None,
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="dataset (repeatable)")
    ] = None,
    priority: Annotated[str | None, typer.Option(help="priority class")] = None,
    max_runtime: Annotated[str | None, typer.Option(help="e.g. 30m, 4h, 2d")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    teacher: Annotated[
        str | None, typer.Option(help="distill: the teacher model (default axk1)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="a config knob, e.g. --set steps=40 --set lr=0.003"),
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="makes retries safe")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Submit a job from flags or a YAML spec (flags override the file)."""
    spec: dict[str, Any] = _load_spec(spec_file) if spec_file else {}
    if set_:
        spec["config"] = {**spec.get("config", {}), **_knobs(set_)}
    overrides: dict[str, Any] = {
        "kind": kind,
        "model": model,
        "gpus": gpus,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "allowed_pools": pool or None,
        "inputs": input_ or None,
        "priority_class": priority,
        "name": name,
        "teacher": teacher,
        "max_runtime_s": parse_duration(max_runtime) if max_runtime else None,
    }
    spec.update({k: v for k, v in overrides.items() if v is not None})
    missing = [f for f in ("kind", "model", "gpus") if f not in spec]
    if missing:
        fail(f"missing {', '.join(missing)}: give --kind, --model and --gpus, or a --file", code=2)
    job = call(lambda c: c.submit_job(spec, idempotency_key=idempotency_key))
    if quiet:
        print(job["id"])
    elif as_json:
        emit(job, True)
    else:
        console.print(
            f"submitted [bold]{job['id']}[/] ({job['status']}): {job['name']}, "
            f"{job['nodes']} x {job['gpus_per_node']} GPUs"
        )


@jobs_app.command("list")
def list_jobs(
    status: Annotated[list[str] | None, typer.Option(help="filter (repeatable)")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    mine: Annotated[bool, typer.Option("--mine", help="only jobs I submitted")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only job ids")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    page = call(
        lambda c: c.list_jobs(
            status=status, kind=kind, submitter="me" if mine else None, limit=limit, cursor=cursor
        )
    )
    if quiet:
        for job in page["items"]:
            print(job["id"])
        return
    emit(page, as_json, JOB_COLUMNS, title="jobs")


@jobs_app.command("get")
def get_job(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job."""
    emit(call(lambda c: c.get_job(job_id)), as_json)


@jobs_app.command("cancel")
def cancel_job(
    job_id: str,
    reason: Annotated[str, typer.Option(help="recorded in the job's events")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel a queued or running job."""
    job = call(lambda c: c.cancel_job(job_id, reason))
    if as_json:
        emit(job, True)
    else:
        console.print(f"{job['id']} is {job['status']}")


@jobs_app.command("events")
def job_events(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What happened to a job, in order."""
    events = call(lambda c: c.job_events(job_id))
    emit(
        {"items": events},
        as_json,
        ["at", "type", "from_status", "to_status", "attempt", "actor", "message"],
        title=f"events of {job_id}",
    )


@jobs_app.command("wait")
def wait_job(
    job_id: str,
    timeout: Annotated[str, typer.Option(help="give up after, e.g. 10m")] = "1h",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the status")] = False,
) -> None:
    """Wait until a job is finished; exit 0 when it SUCCEEDED, 1 otherwise."""
    with progress(f"waiting for {job_id} to finish"):
        job = call(lambda c: c.wait(job_id, timeout_s=parse_duration(timeout)))
    reason = (job.get("reasons") or [{}])[0].get("message", "")
    if quiet:
        print(job["status"])
    else:
        console.print(f"{job['id']} is {job['status']}" + (f": {reason}" if reason else ""))
    if job["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"):
        fail(f"{job_id} is still {job['status']} after {timeout}", code=1)
    if job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("logs")
def job_logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the job ends")
    ] = False,
    tail: Annotated[
        int, typer.Option("--tail", "-n", min=1, max=5000, help="start with the last N lines")
    ] = 200,
    attempt: Annotated[
        int | None, typer.Option(min=1, help="an earlier attempt's lines (default: current)")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.01, hidden=True)] = 1.0,
) -> None:
    """Print a job's log lines (stdout: the lines only, ready for grep).

    With --follow, new lines are printed as they are stored, each exactly once, and those of
    a retried or resumed attempt follow on; it ends by itself when the job is finished,
    printing its final status on stderr, and exits like `nuri jobs wait`: 0 when the job
    SUCCEEDED, 1 when it FAILED, was CANCELLED or REJECTED. Ctrl-C stops following
    (exit 130) and leaves the job running.
    """
    with api_errors(), client() as c:
        try:
            job = c.get_job(job_id)
            current = attempt or job["attempt"]
            rows = c.job_logs(job_id, tail=tail, attempt=current)
            for row in rows:
                _print_line(row["line"])
            if not follow:
                return
            after = max((int(r["id"]) for r in rows), default=0)
            for row in c.follow_logs(job_id, attempt=current, after_id=after, poll_s=interval):
                if row["attempt"] != current:
                    current = row["attempt"]
                    err_console.print(f"[dim]--- attempt {current} ---[/]")
                _print_line(row["line"])
            job = c.get_job(job_id)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    reason = (job.get("reasons") or [{}])[0].get("message", "")
    err_console.print(f"{job['id']} is {job['status']}" + (f": {reason}" if reason else ""))
    if job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


def _print_line(line: str) -> None:
    # Plain print, flushed: a log line is not rich markup, and a pipe sees it at once.
    print(line, flush=True)


WATCH_COLUMNS = ["id", "name", "status", "pool", "GPUs", "queue / progress", "age"]


@jobs_app.command("watch")
def watch_jobs(
    status: Annotated[list[str] | None, typer.Option(help="filter (repeatable)")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="only jobs I submitted")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 2.0,
) -> None:
    """A live table of your member's jobs, newest first, until Ctrl-C.

    When stdout is not a terminal it prints the table once and exits (for scripts).
    """
    filters = {"status": status, "submitter": "me" if mine else None, "limit": limit}
    with api_errors(), client() as c:
        page = c.list_jobs(**filters)
        if not console.is_terminal:
            console.print(_watch_table(page["items"], datetime.now(UTC)))
            return
        try:
            with Live(
                _watch_table(page["items"], datetime.now(UTC), "Ctrl-C to stop"),
                console=console,
                auto_refresh=False,
            ) as live:
                while True:
                    time.sleep(interval)
                    note = "Ctrl-C to stop"
                    try:
                        page = c.list_jobs(**filters)
                    except NuriConnectionError:  # a restarting server: keep the last table
                        note = "cannot reach Nuri; retrying"
                    live.update(_watch_table(page["items"], datetime.now(UTC), note), refresh=True)
        except KeyboardInterrupt:
            return


def _watch_table(jobs: list[dict[str, Any]], now: datetime, note: str = "") -> Table:
    title = f"jobs at {now.astimezone():%H:%M:%S}"
    table = Table(title=title, caption=note or None, caption_justify="left")
    for column in WATCH_COLUMNS:
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            job["id"],
            job["name"],
            _status_cell(job["status"]),
            job.get("pool") or "-",
            str(job["gpus"]),
            _progress_cell(job, now),
            _ago(_when(job["created_at"]), now),
        )
    return table


_STATUS_STYLE = {
    "RUNNING": "green",
    "SUCCEEDED": "bold green",
    "FAILED": "bold red",
    "REJECTED": "red",
    "CANCELLED": "dim",
    "PREEMPTING": "yellow",
}


def _status_cell(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _progress_cell(job: dict[str, Any], now: datetime) -> str:
    """Queued: place and ETA; running: time used of the job's maximum runtime."""
    status = job["status"]
    if status == "QUEUED":
        parts = []
        if job.get("queue_position"):
            parts.append(f"#{job['queue_position']}")
        if job.get("eta"):
            parts.append(f"starts in ~{_span(_when(job['eta']) - now)}")
        reason = (job.get("reasons") or [{}])[0].get("code")
        return ", ".join(parts) or (reason or "waiting")
    if status in ("RUNNING", "PREEMPTING") and job.get("started_at"):
        used = (now - _when(job["started_at"])).total_seconds()
        limit = job.get("max_runtime_s") or 0
        text = f"{_span_s(used)} of {_span_s(limit)}" if limit else _span_s(used)
        if limit:
            text += f" ({min(100, int(100 * used / limit))}%)"
        if status == "PREEMPTING" and job.get("preempt_deadline"):
            text += f", stops in {_span(_when(job['preempt_deadline']) - now)}"
        return text
    if status in TERMINAL_STATUSES and job.get("finished_at"):
        return f"ended {_ago(_when(job['finished_at']), now)} ago"
    return "-"


def _when(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _ago(at: datetime, now: datetime) -> str:
    return _span(now - at)


def _span(delta: timedelta) -> str:
    return _span_s(delta.total_seconds())


def _span_s(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


@jobs_app.command("metrics")
def job_metrics(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job's metric samples by step: loss, eval loss and perplexity, tokens/s."""
    page = call(lambda c: c.request("GET", f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}))
    if as_json:
        emit(page, True)
        return
    keys = ["loss", "eval_loss", "eval_perplexity", "tokens_per_s"]
    rows = [
        {
            "step": m["step"],
            **{k: _fmt(m["values"].get(k)) for k in keys},
            "attempt": m.get("attempt", ""),
        }
        for m in page["items"]
    ]
    emit({"items": rows}, False, ["step", *keys, "attempt"], title=f"metrics of {job_id}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else ""


def where(
    model: Annotated[str, typer.Option(help="base model, model dataset or artifact id")],
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="dataset (repeatable)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Where may a job with this model and these inputs run, and why (a dry run)."""
    out = call(
        lambda c: c.request(
            "POST", "/v1/policies/where", json={"model": model, "inputs": input_ or []}
        )
    )
    if as_json:
        emit(out, True)
        return
    rows = [
        {
            "pool": name,
            "allowed": d["allowed"],
            "rules": ", ".join(d["policy_ids"]),
            "why": "; ".join(d["reasons"]),
        }
        for name, d in out["pools"].items()
    ]
    emit({"items": rows}, False, ["pool", "allowed", "rules", "why"], title="where may it run")
    labels = out["output_labels"]
    console.print(
        f"its outputs would be labelled: regions {', '.join(labels['allowed_regions'])}"
        f"; {labels['classification']}; personal info: {labels['personal_info']}"
    )


@artifacts_app.command("list")
def list_artifacts(
    job: Annotated[str | None, typer.Option(help="only this job's artifacts")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the ids")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Artifacts, newest first, with the label each inherited from its inputs."""
    items = call(lambda c: list(c.paginate("/v1/artifacts")))
    if job:
        items = [a for a in items if a["job_id"] == job]
    if quiet:
        for art in items:
            print(art["id"])
        return
    rows = [
        {
            **a,
            "regions": ", ".join(a["labels"].get("allowed_regions", [])),
            "classification": a["labels"].get("classification", ""),
        }
        for a in items
    ]
    columns = ["id", "name", "kind", "job_id", "regions", "classification", "sha256"]
    emit({"items": rows}, as_json, columns, title="artifacts")


@artifacts_app.command("get")
def get_artifact(art_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One artifact: its label, provenance and fingerprint."""
    emit(call(lambda c: c.request("GET", f"/v1/artifacts/{art_id}")), as_json)
