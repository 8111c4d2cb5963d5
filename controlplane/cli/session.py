"""Where the CLI finds the server and its token, and how it reports errors."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controlplane.client import NuriAPIError, NuriClient, NuriConnectionError

console = Console()
err_console = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nuri" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The file holds a secret: create it private, then move it into place atomically.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    tmp.replace(path)
    return path


def client() -> NuriClient:
    cfg = load_config()
    url = os.environ.get("NURI_URL") or cfg.get("url") or DEFAULT_URL
    token = os.environ.get("NURI_TOKEN") or cfg.get("token")
    if not token:
        fail("not logged in: run `nuri login --token nuri_...` or set NURI_TOKEN", code=2)
    from controlplane.observability import tracing

    # With OTEL_* set, each request starts a trace and carries it to the server (`nuri
    # submit`'s becomes the job's trace); spans are exported when the command exits.
    tracing.configure("nuri-cli")
    return NuriClient(str(url), str(token))


@contextmanager
def progress(message: str) -> Iterator[None]:
    """Say what a slow step is doing, on stderr so that stdout stays parseable (``--json``).

    On a terminal: a spinner, gone when the step ends. Elsewhere (a pipeline, CI): one plain
    line, only if the step is still running after ``NURI_PROGRESS_AFTER_S`` (1 s), so quick
    commands stay quiet in logs.
    """
    if err_console.is_terminal:
        with err_console.status(escape(message)):
            yield
        return
    try:
        delay = float(os.environ.get("NURI_PROGRESS_AFTER_S", "1"))
    except ValueError:
        delay = 1.0
    if delay <= 0:  # asked to always say it
        err_console.print(f"{message} ...", highlight=False, markup=False)
        yield
        return
    timer = threading.Timer(
        delay, err_console.print, (f"{message} ...",), {"highlight": False, "markup": False}
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        # join: a line already being written lands before whatever the command prints next
        timer.join()


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=code)


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn SDK errors into one clear line (plus details) and a non-zero exit."""
    try:
        yield
    except NuriAPIError as exc:
        err_console.print(f"[bold red]error[/] ({exc.status} {exc.code}): {exc.message}")
        if exc.details:
            err_console.print_json(data=exc.details)
        raise typer.Exit(code=1) from None
    except NuriConnectionError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None


def call(fn: Callable[[NuriClient], Any]) -> Any:
    with api_errors(), client() as c:
        return fn(c)


def emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str = "") -> None:
    """Print API data as JSON or as a table of ``columns``."""
    if as_json:
        console.print_json(data=data)
        return
    rows = data["items"] if isinstance(data, dict) and "items" in data else data
    if isinstance(rows, dict):
        table = Table(show_header=False, title=title or None)
        for key, value in rows.items():
            table.add_row(key, _cell(value))
        console.print(table)
        return
    table = Table(title=title or None)
    cols = columns or (list(rows[0].keys()) if rows else ["(none)"])
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in cols])
    console.print(table)
    if isinstance(data, dict) and data.get("next_cursor"):
        console.print(f"[dim]more: --cursor {data['next_cursor']}[/]")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def parse_duration(text: str) -> int:
    """'90', '90s', '30m', '4h', '2d' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 4h or 2d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
