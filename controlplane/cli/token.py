"""`nuri token new`: a Nuri token made here, with no server (e.g. for
NURI_BOOTSTRAP_ADMIN_TOKEN)."""

from __future__ import annotations

import typer

from controlplane import tokens

token_app = typer.Typer(help="Nuri tokens made locally (no server needed).", no_args_is_help=True)


@token_app.command("new")
def new() -> None:
    """Print a new well-formed Nuri token (nuri_ + 32 random characters + a checksum).

    Use it as NURI_BOOTSTRAP_ADMIN_TOKEN to choose the platform admin's first token:
    ``export NURI_BOOTSTRAP_ADMIN_TOKEN=$(nuri token new)``. Nothing is stored anywhere.
    """
    typer.echo(tokens.generate())
