"""`nuri audit events|verify|export|checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from controlplane.audit import store
from controlplane.cli.session import call, console, emit, err_console, fail

audit_app = typer.Typer(
    help="Read, verify and export the tamper-evident audit log.", no_args_is_help=True
)
StreamOpt = Annotated[
    str | None, typer.Option(help="member id or 'platform' (default: all you may read)")
]


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(report, True)
    else:
        emit(
            {"items": report["streams"]},
            False,
            ["stream", "ok", "events", "head_seq", "checkpoints", "first_bad_seq", "reason"],
            title="audit verification",
        )
    if not report["ok"]:
        for problem in report.get("problems", []):
            err_console.print(f"[red]{escape(problem)}[/]")
        bad = [s for s in report["streams"] if not s["ok"]]
        if bad:
            err_console.print(
                f"[bold red]audit log verification FAILED[/] in {len(bad)} stream(s); "
                f"first bad seq in {escape(bad[0]['stream'])}: {bad[0]['first_bad_seq']}"
            )
        else:
            err_console.print("[bold red]audit log verification FAILED[/]: the export is damaged")
        raise typer.Exit(code=1)


@audit_app.command("verify")
def verify(
    stream: StreamOpt = None,
    offline: Annotated[
        Path | None, typer.Option(help="verify an export directory instead (no server needed)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute the hash chains and checkpoint signatures; exit 1 on any break."""
    if offline is not None:
        if not (offline / "manifest.json").exists():
            fail(f"{offline} is not an audit export (no manifest.json)", code=2)
        try:
            report = store.verify_export(offline).to_dict()
        except (OSError, ValueError, KeyError) as exc:
            fail(f"cannot read the export in {offline}: {exc}", code=2)
    else:
        report = call(lambda c: c.request("GET", "/v1/audit/verify", params={"stream": stream}))
    _print_report(report, as_json)


@audit_app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="directory to write")],
    stream: StreamOpt = None,
) -> None:
    """Write events.jsonl, checkpoints.jsonl, public_key.pem and manifest.json."""
    try:
        summary = call(
            lambda c: store.write_export(
                c.stream_bytes("GET", "/v1/audit/export", params={"stream": stream}), out
            )
        )
    except store.ExportError as exc:
        fail(f"the export is incomplete and was not written: {exc}", code=1)
    except OSError as exc:
        fail(f"cannot write to {out}: {exc.strerror}", code=2)
    console.print(
        f"exported {summary.events} events and {summary.checkpoints} "
        f"checkpoints of {len(summary.streams)} stream(s) to {out}"
    )
    for p in summary.paths:
        console.print(f"  {p}")
    console.print(f"verify offline with: nuri audit verify --offline {out}")


@audit_app.command("events")
def events(
    stream: StreamOpt = None,
    after: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List audit events in order."""
    page = call(
        lambda c: c.request(
            "GET", "/v1/audit/events", params={"stream": stream, "after": after, "limit": limit}
        )
    )
    emit(
        page,
        as_json,
        ["id", "stream", "seq", "at", "actor", "action", "resource_id", "outcome"],
        title="audit events",
    )
    if page.get("next_after") and not as_json:
        console.print(f"[dim]more: --after {page['next_after']}[/]")


@audit_app.command("checkpoint")
def checkpoint() -> None:
    """Sign every stream's head now (platform admin)."""
    out = call(lambda c: c.request("POST", "/v1/audit/checkpoints"))
    console.print(f"signed {out['checkpoints']} stream head(s)")
