"""`nuri admin members|users|tokens|pools|nodes|quotas|budgets|usage ...`, `nuri datasets ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli.session import call, console, emit, fail
from controlplane.client import NuriClient

admin_app = typer.Typer(help="Platform and member administration.", no_args_is_help=True)
members = typer.Typer(help="Consortium members.", no_args_is_help=True)
users = typer.Typer(
    help="Users of a member (or platform-wide admins and auditors).", no_args_is_help=True
)
tokens = typer.Typer(help="API tokens (the secret is shown once).", no_args_is_help=True)
pools = typer.Typer(help="GPU pools (resource flavors at a site).", no_args_is_help=True)
nodes = typer.Typer(help="Nodes of the pools.", no_args_is_help=True)
quotas = typer.Typer(help="Member x pool quotas.", no_args_is_help=True)
budgets = typer.Typer(help="GPU-hour budgets per period.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets and models your member registered.", no_args_is_help=True)
for sub, name in (
    (members, "members"),
    (users, "users"),
    (tokens, "tokens"),
    (pools, "pools"),
    (nodes, "nodes"),
    (quotas, "quotas"),
    (budgets, "budgets"),
):
    admin_app.add_typer(sub, name=name)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _list(collection: str, columns: list[str], as_json: bool, **params: Any) -> None:
    def fetch(c: NuriClient) -> Any:
        return {"items": list(c.paginate(f"/v1/{collection}", params))}

    emit(call(fetch), as_json, columns, title=collection)


def _show(data: Any, as_json: bool) -> None:
    emit(data, as_json)


# --- members -------------------------------------------------------------------------------


@members.command("list")
def members_list(as_json: JsonOpt = False) -> None:
    _list("members", ["id", "name", "display_name", "kind", "country", "active"], as_json)


@members.command("create")
def members_create(
    name: Annotated[str, typer.Argument(help="slug, e.g. hangang-university")],
    display_name: Annotated[str, typer.Option(help="human name")],
    kind: Annotated[str, typer.Option()] = "other",
    country: Annotated[str, typer.Option()] = "KR",
    as_json: JsonOpt = False,
) -> None:
    body = {"name": name, "display_name": display_name, "kind": kind, "country": country}
    _show(call(lambda c: c.create("members", body)), as_json)


@members.command("get")
def members_get(ref: str, as_json: JsonOpt = False) -> None:
    _show(call(lambda c: c.get("members", ref)), as_json)


# --- users ---------------------------------------------------------------------------------


@users.command("list")
def users_list(
    member: Annotated[str | None, typer.Option()] = None, as_json: JsonOpt = False
) -> None:
    _list("users", ["id", "email", "name", "role", "member_id", "disabled"], as_json, member=member)


@users.command("create")
def users_create(
    email: str,
    name: Annotated[str, typer.Option()],
    role: Annotated[
        str, typer.Option(help="member_user|member_admin|auditor|platform_admin")
    ] = "member_user",
    member: Annotated[str | None, typer.Option(help="member name or id")] = None,
    as_json: JsonOpt = False,
) -> None:
    body = {"email": email, "name": name, "role": role, "member": member}
    _show(call(lambda c: c.create("users", body)), as_json)


@users.command("disable")
def users_disable(user_id: str, as_json: JsonOpt = False) -> None:
    _show(call(lambda c: c.update("users", user_id, {"disabled": True})), as_json)


# --- tokens --------------------------------------------------------------------------------


@tokens.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    _list(
        "tokens",
        [
            "id",
            "name",
            "user_id",
            "display_prefix",
            "scopes",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ],
        as_json,
    )


@tokens.command("create")
def tokens_create(
    name: str,
    user: Annotated[str | None, typer.Option(help="user id or email (default: yourself)")] = None,
    scope: Annotated[
        list[str] | None, typer.Option(help="read|write|admin|metrics (repeatable)")
    ] = None,
    expires_in_days: Annotated[int, typer.Option(min=1, max=730)] = 90,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the secret")] = False,
    as_json: JsonOpt = False,
) -> None:
    body = {"name": name, "user_id": user, "scopes": scope, "expires_in_days": expires_in_days}
    created = call(lambda c: c.create("tokens", body))
    if quiet:
        print(created["token"])
        return
    if as_json:
        emit(created, True)
        return
    console.print(
        f"token [bold]{created['id']}[/] for {created['user_id']} "
        f"(scopes {', '.join(created['scopes'])}, expires {created['expires_at']})"
    )
    console.print("secret (shown once, store it now):")
    console.print(created["token"], soft_wrap=True, highlight=False)


@tokens.command("revoke")
def tokens_revoke(token_id: str, as_json: JsonOpt = False) -> None:
    _show(call(lambda c: c.request("DELETE", f"/v1/tokens/{token_id}")), as_json)


# --- pools and nodes -----------------------------------------------------------------------


@pools.command("list")
def pools_list(as_json: JsonOpt = False) -> None:
    _list(
        "pools",
        [
            "name",
            "gpu_model",
            "gpu_memory_gib",
            "gpus_per_node",
            "node_count",
            "total_gpus",
            "region",
            "jurisdiction",
            "max_classification",
            "default_borrowing_limit",
        ],
        as_json,
    )


_DEFAULT_BORROWING_HELP = (
    "what members without a quota row here may borrow: 0 (nothing), a number of GPUs, "
    'or "unlimited"'
)


def _default_borrowing(text: str) -> int | str:
    """The option's value for the API: a number of GPUs, or the word "unlimited" (anything
    else goes as typed and the API refuses it with its message)."""
    text = text.strip().lower()
    return int(text) if text.isascii() and text.isdigit() else text


@pools.command("create")
def pools_create(
    name: str,
    gpu_model: Annotated[str, typer.Option()],
    gpu_memory_gib: Annotated[int, typer.Option()],
    gpus_per_node: Annotated[int, typer.Option()],
    site: Annotated[str, typer.Option()],
    region: Annotated[str, typer.Option()],
    jurisdiction: Annotated[str, typer.Option()],
    max_classification: Annotated[str, typer.Option()] = "open",
    domain: Annotated[
        list[str] | None, typer.Option(help="interconnect domain (repeatable)")
    ] = None,
    node_count: Annotated[int, typer.Option(help="register this many nodes now")] = 0,
    default_borrowing: Annotated[str, typer.Option(help=_DEFAULT_BORROWING_HELP)] = "unlimited",
    as_json: JsonOpt = False,
) -> None:
    body = {
        "name": name,
        "gpu_model": gpu_model,
        "gpu_memory_gib": gpu_memory_gib,
        "gpus_per_node": gpus_per_node,
        "site": site,
        "region": region,
        "jurisdiction": jurisdiction,
        "max_classification": max_classification,
        "interconnect_domains": domain or [],
        "node_count": node_count,
        "default_borrowing_limit": _default_borrowing(default_borrowing),
    }
    _show(call(lambda c: c.create("pools", body)), as_json)


@pools.command("update")
def pools_update(
    ref: str,
    default_borrowing: Annotated[str | None, typer.Option(help=_DEFAULT_BORROWING_HELP)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a pool's settings (only the options given)."""
    body: dict[str, Any] = {}
    if default_borrowing is not None:
        body["default_borrowing_limit"] = _default_borrowing(default_borrowing)
    if not body:
        fail("nothing to change: give --default-borrowing")
    _show(call(lambda c: c.update("pools", ref, body)), as_json)


@pools.command("get")
def pools_get(ref: str, as_json: JsonOpt = False) -> None:
    _show(call(lambda c: c.get("pools", ref)), as_json)


@nodes.command("list")
def nodes_list(
    pool: Annotated[str | None, typer.Option()] = None, as_json: JsonOpt = False
) -> None:
    _list("nodes", ["name", "pool_id", "domain", "gpus", "status"], as_json, pool=pool)


@nodes.command("create")
def nodes_create(
    name: str,
    pool: Annotated[str, typer.Option()],
    domain: Annotated[str | None, typer.Option()] = None,
    gpus: Annotated[int | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    body = {"name": name, "pool": pool, "domain": domain, "gpus": gpus}
    _show(call(lambda c: c.create("nodes", body)), as_json)


@nodes.command("set-status")
def nodes_set_status(
    ref: str,
    status: Annotated[str, typer.Argument(help="ready|cordoned|down|quarantined")],
    as_json: JsonOpt = False,
) -> None:
    _show(call(lambda c: c.update("nodes", ref, {"status": status})), as_json)


# --- quotas and budgets --------------------------------------------------------------------


@quotas.command("list")
def quotas_list(
    member: Annotated[str | None, typer.Option()] = None,
    pool: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    _list(
        "quotas",
        ["id", "member_id", "pool_id", "nominal_gpus", "borrowing_limit", "lending_limit"],
        as_json,
        member=member,
        pool=pool,
    )


@quotas.command("set")
def quotas_set(
    member: Annotated[str, typer.Option()],
    pool: Annotated[str, typer.Option()],
    nominal: Annotated[int, typer.Option(min=0, help="guaranteed GPUs")],
    borrowing_limit: Annotated[int | None, typer.Option(min=0)] = None,
    lending_limit: Annotated[int | None, typer.Option(min=0)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the member's quota in the pool, or update it when it exists."""
    limits = {
        "nominal_gpus": nominal,
        "borrowing_limit": borrowing_limit,
        "lending_limit": lending_limit,
    }

    def upsert(c: NuriClient) -> Any:
        found = c.list("quotas", member=member, pool=pool)["items"]
        if found:
            return c.update("quotas", found[0]["id"], limits)
        return c.create("quotas", {"member": member, "pool": pool, **limits})

    _show(call(upsert), as_json)


@budgets.command("list")
def budgets_list(
    member: Annotated[str | None, typer.Option()] = None, as_json: JsonOpt = False
) -> None:
    _list(
        "budgets",
        ["id", "member_id", "period", "gpu_hours", "used_gpu_hours"],
        as_json,
        member=member,
    )


@budgets.command("set")
def budgets_set(
    member: Annotated[str, typer.Option()],
    period: Annotated[str, typer.Option(help="2026-Q4, 2026-H1 or 2026-11")],
    gpu_hours: Annotated[float, typer.Option(min=0)],
    as_json: JsonOpt = False,
) -> None:
    """Create the member's budget for the period, or update it when it exists."""

    def upsert(c: NuriClient) -> Any:
        found = [b for b in c.list("budgets", member=member)["items"] if b["period"] == period]
        if found:
            return c.update("budgets", found[0]["id"], {"gpu_hours": gpu_hours})
        return c.create("budgets", {"member": member, "period": period, "gpu_hours": gpu_hours})

    _show(call(upsert), as_json)


# --- datasets ------------------------------------------------------------------------------


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    _list("datasets", ["id", "name", "kind", "uri", "labels", "version"], as_json)


@datasets_app.command("create")
def datasets_create(
    name: str,
    uri: Annotated[str, typer.Option()],
    labels: Annotated[
        str,
        typer.Option(help='JSON, e.g. \'{"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]}\''),
    ],
    kind: Annotated[str, typer.Option(help="data|model")] = "data",
    description: Annotated[str, typer.Option()] = "",
    as_json: JsonOpt = False,
) -> None:
    try:
        parsed = json.loads(labels)
    except ValueError as exc:
        fail(f"--labels is not valid JSON: {exc}", code=2)
    body = {"name": name, "uri": uri, "labels": parsed, "kind": kind, "description": description}
    _show(call(lambda c: c.create("datasets", body)), as_json)


@datasets_app.command("get")
def datasets_get(ref: str, as_json: JsonOpt = False) -> None:
    _show(call(lambda c: c.get("datasets", ref)), as_json)


# --- policies ------------------------------------------------------------------------------

policies_app = typer.Typer(help="Versioned Cedar policy sets.", no_args_is_help=True)
admin_app.add_typer(policies_app, name="policies")


@policies_app.command("show")
def policies_show(as_json: JsonOpt = False) -> None:
    """The active policy set: version, hash and rule ids."""
    _show(call(lambda c: c.request("GET", "/v1/policies")), as_json)


@policies_app.command("list")
def policies_list(as_json: JsonOpt = False) -> None:
    _list(
        "policies/versions",
        ["id", "version", "active", "note", "created_by", "created_at"],
        as_json,
    )


@policies_app.command("upload")
def policies_upload(
    file: Annotated[Path, typer.Argument(help="Cedar policies (.cedar)")],
    note: Annotated[str, typer.Option()] = "",
    schema: Annotated[
        Path | None, typer.Option(help="Cedar JSON schema (default: shipped)")
    ] = None,
    activate: Annotated[bool, typer.Option(help="make it the active set now")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a new policy set (validated against the schema)."""
    try:
        text = file.read_text()
        schema_text = schema.read_text() if schema else None
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror}", code=2)
    body = {"policies": text, "cedar_schema": schema_text, "note": note, "activate": activate}
    _show(call(lambda c: c.create("policies/versions", body)), as_json)


@policies_app.command("activate")
def policies_activate(version_id: int, as_json: JsonOpt = False) -> None:
    _show(
        call(lambda c: c.request("POST", f"/v1/policies/versions/{version_id}/activate")), as_json
    )


@policies_app.command("revert")
def policies_revert(as_json: JsonOpt = False) -> None:
    """Go back to the policy set shipped with this release."""
    _show(call(lambda c: c.request("POST", "/v1/policies/revert")), as_json)


# --- usage ---------------------------------------------------------------------------------


@admin_app.command("usage")
def usage(
    period: Annotated[str, typer.Option(help="2026-Q4, 2026-H1 or 2026-11")],
    member: Annotated[str | None, typer.Option(help="one member (admins and auditors)")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="print CSV (for spreadsheets)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """GPU-hours per member and pool in a period (your member's, or every member's)."""
    params = {"period": period, "member": member}
    if csv_out:

        def fetch_csv(c: NuriClient) -> str:
            return c.request_text("GET", "/v1/usage", params={**params, "format": "csv"})

        typer.echo(call(fetch_csv), nl=False)
        return
    report = call(lambda c: c.request("GET", "/v1/usage", params=params))
    if as_json:
        emit(report, True)
        return
    emit(
        {"items": report["lines"]},
        False,
        ["member", "pool", "jobs", "attempts", "gpu_hours", "running_attempts"],
        title=f"usage {report['period']}: {report['total_gpu_hours']} GPU-hours",
    )
