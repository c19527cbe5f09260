"""`tokenward status`: every credential's state, expiry, refreshes and last error (no secret), as
a table sized to the terminal or as JSON, with the next step for one that needs a person.

Why its own module: the table layout (wide and narrow terminals) is presentation only, and
keeps cli.py under ~500 lines.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from .cli_base import config_option
from .config import Config, CredentialConfig, load_config
from .token import fingerprint

__all__ = ["WIDE_STATUS", "expires", "next_step", "status"]


def next_step(settings: CredentialConfig) -> str:
    """What to run to give a credential its first token: export the secrets it references
    that are not set yet, then log in (or, for grants that need no person, ask for a token)."""
    unset = [
        str(value)[4:]
        for key in ("client_id", "client_secret", "api_key")
        if str(value := getattr(settings.provider, key) or "").startswith("env:")
        and not os.environ.get(str(value)[4:])
    ]
    exports = "".join(f"export {var}=...; " for var in unset)
    if settings.grant == "refresh_token":
        return f"{exports}tokenward login {settings.name}"
    return f"{exports}tokenward token {settings.name}"


def expires(expires_at: float | None, short: bool = False) -> str:
    if expires_at is None:
        return "unknown" if short else "expiry unknown"
    left = expires_at - time.time()
    if short:
        return f"in {left:.0f}s" if left > 0 else f"{-left:.0f}s ago"
    return f"expires in {left:.0f}s" if left > 0 else f"expired {-left:.0f}s ago"


def _status_rows(config: Config) -> list[dict[str, Any]]:
    rows = []
    for name, settings in sorted(config.credentials.items()):
        record = config.store_for(settings).load(name)
        expires_at = record.expires_at if record else None
        rows.append(
            {
                "name": name,
                "preset": settings.preset,
                "grant": settings.grant,
                "state": record.state if record else "empty",
                "token": fingerprint(record.access_token) if record else "-",
                "expires_at": expires_at,
                "expires_in": None if expires_at is None else round(expires_at - time.time()),
                "last_refresh": record.obtained_at if record else None,
                "refresh_count": record.refresh_count if record else 0,
                "last_error": record.last_error if record else None,
            }
        )
    return rows


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _prefix_rows(config: Config, prefix: str) -> list[dict[str, Any]]:
    """Every stored key starting with `prefix` (e.g. `ml:` for one record per end user)."""
    rows, seen = [], set()
    for settings in config.credentials.values():
        store = config.store_for(settings)
        if id(store) in seen:
            continue
        seen.add(id(store))
        for key in store.keys(prefix):
            record = store.load(key)
            owner = config.credentials.get(key.split(":", 1)[0])
            rows.append(
                {
                    "name": key,
                    "preset": owner.preset if owner else None,
                    "grant": owner.grant if owner else None,
                    "state": record.state if record else "empty",
                    "token": fingerprint(record.access_token) if record else "-",
                    "expires_at": record.expires_at if record else None,
                    "expires_in": None
                    if record is None or record.expires_at is None
                    else round(record.expires_at - time.time()),
                    "last_refresh": record.obtained_at if record else None,
                    "refresh_count": record.refresh_count if record else 0,
                    "last_error": record.last_error if record else None,
                }
            )
    return sorted(rows, key=lambda row: str(row["name"]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--prefix",
    default=None,
    help="List every stored key starting with this (e.g. `ml:` for per-user records).",
)
@config_option
def status(as_json: bool, prefix: str | None, config_path: Path | None) -> None:
    """Show every configured credential: state, expiry, refreshes, last error. No secrets.

    \b
    Example:
      tokenward status
      tokenward status --prefix 'ml:'
      tokenward status --json | jq '.[] | select(.state != "ok")'
    """
    config = load_config(config_path)
    rows = _status_rows(config) if prefix is None else _prefix_rows(config, prefix)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console

    if not rows:
        source = config.path or "the configuration"
        where = f"stored under {prefix!r}" if prefix else f"configured in {source}"
        click.echo(f"no credential {where}; next: tokenward add NAME --preset PRESET")
        return
    console = Console()
    wide = console.width >= WIDE_STATUS
    console.print(_status_table(rows, wide))
    if not wide:
        for line in _status_errors(rows):
            console.print(line, highlight=False, markup=False)
    for row in rows:
        hint = _status_hint(config, row)
        if hint:
            click.echo(hint)


#: Terminal width from which `status` shows every column on one line per credential.
WIDE_STATUS = 140


def _status_table(rows: list[dict[str, Any]], wide: bool) -> Any:
    """Every column on a wide terminal. Narrower (80 columns), the columns that fit without
    cutting a name or a state; the last errors are then listed under the table."""
    from rich import box
    from rich.table import Table

    columns = ["credential", "state", "token", "expires", "refreshes"]
    if wide:
        columns[4:4] = ["last refresh"]
    table = Table(*columns, box=box.ROUNDED if wide else box.SIMPLE_HEAD)
    if wide:
        table.add_column("error", overflow="fold")
    for column in table.columns[:4]:
        column.no_wrap = True
    for row in rows:
        cells = [
            row["name"],
            row["state"],
            row["token"],
            expires(row["expires_at"], short=not wide) if row["state"] != "empty" else "-",
            str(row["refresh_count"]),
        ]
        if wide:
            cells[4:4] = [_when(row["last_refresh"])]
            cells.append(row["last_error"] or "")
        table.add_row(*cells)
    return table


def _status_errors(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{row['name']}: {row['last_error']}" for row in rows if row["last_error"]]


def _status_hint(config: Config, row: dict[str, Any]) -> str | None:
    """The next step for a credential that has no usable token yet."""
    settings = config.credentials.get(str(row["name"]))
    if settings is None:
        return None
    if row["state"] == "empty":
        return f"{row['name']} has no token yet; next: {next_step(settings)}"
    if row["state"] == "needs_reauth":
        return f"{row['name']} needs a login; next: tokenward login {row['name']}"
    return None
