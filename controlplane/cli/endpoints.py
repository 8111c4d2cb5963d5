"""`nuri endpoints create|list|get|delete`: online models served through the gateway."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from controlplane.cli.session import call, console, emit, fail

endpoints_app = typer.Typer(
    help="Your member's online endpoints (OpenAI-compatible, at /openai/v1).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
COLUMNS = ["name", "model", "state", "replicas", "where", "tokens_served", "requests_served"]
REPLICA_COLUMNS = ["index", "job_id", "status", "kind", "pool", "nodes", "waiting_for"]


def _adapters(pairs: list[str]) -> dict[str, str]:
    """``name=art_id`` pairs (clients then name one as model ``<endpoint>:<name>``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, art = pair.partition("=")
        if not sep or not name or not art:
            fail(f"--adapter takes name=art_id, got {pair!r}", code=2)
        out[name] = art
    return out


def _where(endpoint: dict[str, Any]) -> str:
    """Where each replica runs: ``pool: node, node`` (or its status while it waits)."""
    parts = []
    for r in endpoint.get("replicas", []):
        if r["pool"]:
            parts.append(f"{r['pool']}: {', '.join(r['nodes'])}" if r["nodes"] else r["pool"])
        else:
            parts.append(r["status"].lower())
    return "; ".join(parts) or ("waiting" if endpoint["desired_replicas"] else "scaled to zero")


def _row(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        **endpoint,
        "replicas": f"{endpoint['ready_replicas']}/{endpoint['desired_replicas']} ready "
        f"({endpoint['min_replicas']}-{endpoint['max_replicas']})",
        "where": _where(endpoint),
    }


@endpoints_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="slug; clients send it as the model")],
    model: Annotated[
        str, typer.Option(help="a base preset, a registered model or a model artifact")
    ],
    min_replicas: Annotated[
        int | None, typer.Option(help="guaranteed replicas (0: scale to zero when idle)")
    ] = None,
    max_replicas: Annotated[int | None, typer.Option(help="replicas at most")] = None,
    gpus_per_replica: Annotated[int | None, typer.Option(help="one node's GPUs at most")] = None,
    pool: Annotated[list[str] | None, typer.Option(help="allowed pool (repeatable)")] = None,
    priority_class: Annotated[str | None, typer.Option(help="priority class")] = None,
    max_context: Annotated[int | None, typer.Option(help="tokens of prompt + answer")] = None,
    max_tokens_default: Annotated[
        int | None, typer.Option(help="max_tokens when a request gives none")
    ] = None,
    idle_s: Annotated[
        float | None, typer.Option(help="idle seconds before scaling to zero")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="a LoRA adapter artifact, name=art_id (repeatable)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the name")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an endpoint (checked like a job: model, pools, residency, replica shape)."""
    body: dict[str, Any] = {"name": name, "model": model}
    fields = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "gpus_per_replica": gpus_per_replica,
        "allowed_pools": pool or None,
        "priority_class": priority_class,
        "adapters": _adapters(adapter) if adapter else None,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    config = {
        "max_context": max_context,
        "max_tokens_default": max_tokens_default,
        "idle_s": idle_s,
    }
    if any(v is not None for v in config.values()):
        body["config"] = {k: v for k, v in config.items() if v is not None}
    made = call(lambda c: c.create("endpoints", body))
    if quiet:
        print(made["name"])
    elif as_json:
        emit(made, True)
    else:
        console.print(
            f"created endpoint [bold]{made['name']}[/] ({made['id']}): {made['model']}, "
            f"{made['min_replicas']}-{made['max_replicas']} replicas x "
            f"{made['gpus_per_replica']} GPUs; call it as model {made['name']!r} at /openai/v1"
        )


@endpoints_app.command("list")
def list_endpoints(
    member: Annotated[
        str | None, typer.Option(help="only this member's (platform admins, auditors)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the names")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Endpoints with their replicas: how many are ready, where they run, tokens served."""
    params = {"member": member} if member else None
    items = call(lambda c: list(c.paginate("/v1/endpoints", params)))
    if quiet:
        for e in items:
            print(e["name"])
        return
    if as_json:
        emit({"items": items}, True)
        return
    emit({"items": [_row(e) for e in items]}, False, COLUMNS, title="endpoints")


@endpoints_app.command("get")
def get(name: str, as_json: JsonOpt = False) -> None:
    """One endpoint, then its replicas (status, guaranteed or burst, pool, nodes, reasons)."""
    endpoint = call(lambda c: c.get("endpoints", quote(name, safe="")))
    if as_json:
        emit(endpoint, True)
        return
    emit(_row(endpoint), False)  # "replicas" as "ready/desired", the list below
    rows = [
        {
            **r,
            "kind": "guaranteed" if r["guaranteed"] else "burst",
            "nodes": ", ".join(r["nodes"]) or "-",
            "waiting_for": "; ".join(f"{x.get('code')}: {x.get('message')}" for x in r["reasons"]),
        }
        for r in endpoint["replicas"]
    ]
    if rows:
        emit({"items": rows}, False, REPLICA_COLUMNS, title=f"replicas of {name}")
    else:
        console.print("no replica yet" if endpoint["desired_replicas"] else "scaled to zero")


@endpoints_app.command("delete")
def delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete an endpoint: its replicas stop, its name is free again at once."""
    gone = call(lambda c: c.request("DELETE", f"/v1/endpoints/{quote(name, safe='')}"))
    if as_json:
        emit(gone, True)
    else:
        console.print(f"deleted endpoint {name} ({gone['id']}); its replicas are stopping")
