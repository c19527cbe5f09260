"""`tokenward` command line: configure credentials, log in, print tokens, show their state.

Why a CLI: the first login (browser or device code), a look at "which credential is about to
need a person", and `curl -H "Authorization: Bearer $(tokenward token ml)"` are things people
do by hand. Output contract: `token` prints the token and nothing else on stdout; every error is
one sentence plus the fix on stderr, with a distinct exit code:

    0 ok, 1 other failure, 2 usage or configuration error, 3 re-authorization required,
    4 provider unreachable, 5 `serve`: address already in use

No command prints a secret except `token` (which exists to do so); tokens are shown by
fingerprint. Tracebacks only with `--debug`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx2

from .cli_rekey import rekey
from .config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    CredentialConfig,
    InlineSecretWarning,
    ReadableSecretsWarning,
    load_config,
    load_preset,
    parse_config,
    preset_names,
)
from .errors import (
    CredentialNotSeeded,
    MalformedTokenResponse,
    ReauthorizationRequired,
    RefreshFailed,
    RequestRejected,
    TokenwardError,
    TransientError,
)
from .sources.authorization import AuthorizationDenied, DeviceAuthorization
from .token import fingerprint

__all__ = [
    "EXIT_ADDRESS_IN_USE",
    "EXIT_CONFIG",
    "EXIT_REAUTH",
    "EXIT_UNREACHABLE",
    "cli",
    "main",
]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_REAUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_ADDRESS_IN_USE = 5  # `serve`: the listen address is taken

STARTER = """\
# tokenward configuration (docs: docs/configuration.md).
# Secrets are references, never values: env:NAME reads an environment variable,
# file:PATH reads a file (trailing newline stripped). Keep this file `chmod 600`.

[store]
# Where tokens live. Default: SQLite in your user data directory.
# url = "sqlite:///var/lib/tokenward/tokens.db"
# url = "dotenv://.env"            # keep tokens in an existing .env

# A MercadoLibre app (`tokenward presets` lists the providers tokenward knows):
# [credentials.ml]
# preset = "mercadolibre"
# client_id = "1234567890"
# client_secret = "env:ML_CLIENT_SECRET"

# A HeyGen API key exchanged for short-lived session tokens:
# [credentials.heygen]
# preset = "heygen"
# api_key = "file:~/.secrets/heygen-api-key"
"""


# -- error handling -------------------------------------------------------------------------------
def _exit_code(exc: BaseException) -> tuple[int, str]:
    """Exit code and a fix hint for an exception reaching the top."""
    if isinstance(exc, AddressInUse):
        return EXIT_ADDRESS_IN_USE, ""
    if isinstance(exc, ConfigError | RequestRejected | MalformedTokenResponse):
        return EXIT_CONFIG, ""
    if isinstance(exc, ReauthorizationRequired | CredentialNotSeeded | AuthorizationDenied):
        return EXIT_REAUTH, ""
    if isinstance(exc, RefreshFailed | TransientError | httpx2.TransportError):
        return EXIT_UNREACHABLE, " Check the network and the credential's base_url/token_url."
    return EXIT_FAILURE, ""


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    code, hint = _exit_code(exc)
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, httpx2.TransportError):
        message = f"cannot reach the provider ({type(exc).__name__})."
    else:
        message = str(exc)
    click.echo(f"error: {message}{hint}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """Maps tokenward errors to exit codes and one-line messages (tracebacks with --debug).

    The global options (`--config`, `--json`, `--debug`) work before and after the subcommand:
    before, they become the subcommand's defaults (`default_map`); after, every command accepts
    `--debug` (added here when a command is registered) and its own `--config`/`--json`.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _accept_debug(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", InlineSecretWarning)
                warnings.simplefilter("always", ReadableSecretsWarning)
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except (TokenwardError, httpx2.TransportError, OSError) as exc:
            _fail(exc, bool(ctx.meta.get("tokenward.debug")))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """tokenward's own warnings as one `warning: ...` line, like its errors (no source line)."""
    if issubclass(category, InlineSecretWarning | ReadableSecretsWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["tokenward.debug"] = True  # meta is shared by the whole context chain


def _accept_debug(cmd: click.Command) -> None:
    """Let `tokenward COMMAND ... --debug` work like `tokenward --debug COMMAND ...`."""
    if not any(param.name == "debug" for param in cmd.params):
        cmd.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                callback=_set_debug,
                help="Show tracebacks on errors.",
            )
        )
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _accept_debug(sub)


def _global_defaults(group: click.Group, values: dict[str, Any]) -> dict[str, Any]:
    """A `default_map` giving every (sub)command that has one of these parameters its value."""
    defaults: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            defaults[name] = _global_defaults(cmd, values)
        else:
            names = {param.name for param in cmd.params}
            defaults[name] = {key: value for key, value in values.items() if key in names}
    return defaults


def _takes(group: click.Group, param: str) -> list[str]:
    """Names of the commands that accept `param` (for the error of a misplaced global)."""
    return sorted(
        name for name, cmd in group.commands.items() if any(p.name == param for p in cmd.params)
    )


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenward", prog_name="tokenward")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Configuration file (default: ${CONFIG_ENV}, ./tokenward.toml, user config dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (status).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, as_json: bool, debug: bool) -> None:
    """Keep API credentials alive.

    Global options also work after the command: `tokenward status --json --config x.toml`.

    \b
    Example:
      tokenward init && tokenward add ml --preset mercadolibre \\
          --client-id 123 --client-secret env:ML_CLIENT_SECRET
      tokenward login ml
      curl -H "Authorization: Bearer $(tokenward token ml)" https://api.mercadolibre.com/users/me
    """
    if debug:
        ctx.meta["tokenward.debug"] = True
    group = ctx.command
    assert isinstance(group, click.Group)
    values: dict[str, Any] = {}
    if config_path is not None:
        values["config_path"] = config_path
    if as_json:
        subcommand = group.commands.get(ctx.invoked_subcommand or "")
        if subcommand is not None and not any(p.name == "as_json" for p in subcommand.params):
            raise click.UsageError(
                f"`tokenward {ctx.invoked_subcommand}` has no JSON output; --json works with: "
                + ", ".join(_takes(group, "as_json")),
                ctx,
            )
        values["as_json"] = True
    if values:
        ctx.default_map = _global_defaults(group, values)


def _config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Configuration file (default: ${CONFIG_ENV}, ./tokenward.toml, user config dir).",
    )(fn)


def _load(config_path: Path | None) -> Config:
    return load_config(config_path)


def _target_path(config_path: Path | None) -> Path:
    """Where `init`/`add` write: the given path, $TOKENWARD_CONFIG, else ./tokenward.toml."""
    if config_path is not None:
        return config_path
    return Path(os.environ.get(CONFIG_ENV) or "tokenward.toml").expanduser()


def _write_private(path: Path, text: str) -> None:
    """Write `path` with mode 0600 (it may hold references to secrets, or secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# -- init, add, presets ---------------------------------------------------------------------------
@cli.command()
@_config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path | None, force: bool) -> None:
    """Write a commented starter configuration (mode 0600).

    \b
    Example:
      tokenward init                      # ./tokenward.toml
      tokenward init --config ~/.config/tokenward/config.toml
    """
    path = _target_path(config_path)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; edit it, or pass --force to overwrite it.")
    _write_private(path, STARTER)
    click.echo(f"wrote {path}; next: tokenward add NAME --preset PRESET")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(value)


def _table_text(name: str, settings: dict[str, Any]) -> str:
    lines = [f"\n[credentials.{json.dumps(name) if not name.isidentifier() else name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _append_credential(path: Path, name: str, settings: dict[str, Any]) -> None:
    """Append a `[credentials.NAME]` table, keeping the file's comments; validated first."""
    import tomllib

    current = path.read_text(encoding="utf-8") if path.exists() else STARTER
    text = current + _table_text(name, settings)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if name in tomllib.loads(current).get("credentials", {}):
        raise ConfigError(f"{path}: [credentials.{name}] already exists; edit it by hand.")
    parse_config(data, path)
    _write_private(path, text)


@cli.command()
@click.argument("name")
@click.option("--preset", help="A preset from `tokenward presets`.")
@click.option("--client-id", help="OAuth client id (a value, or env:NAME / file:PATH).")
@click.option("--client-secret", help="OAuth client secret reference: env:NAME or file:PATH.")
@click.option("--api-key", help="API key reference: env:NAME or file:PATH.")
@click.option("--base-url", help="Override the preset's base URL.")
@click.option("--issuer", help="Issuer URL for endpoint discovery (generic-oauth2).")
@click.option("--token-url", help="Token endpoint URL.")
@click.option("--scope", help="Scope requested at login.")
@click.option(
    "--grant",
    type=click.Choice(["refresh_token", "client_credentials", "api_key"]),
    help="How tokens are obtained (default: the preset's, else refresh_token).",
)
@_config_option
def add(name: str, config_path: Path | None, **options: str | None) -> None:
    """Add a [credentials.NAME] table to the configuration.

    Secrets must be references (env:NAME, file:PATH): a value typed on the command line would
    stay in the shell history.

    \b
    Example:
      tokenward add ml --preset mercadolibre --client-id 123 \\
          --client-secret env:ML_CLIENT_SECRET
      tokenward add avatar --preset heygen --api-key file:/run/secrets/heygen
    """
    settings = {key: value for key, value in options.items() if value is not None}
    for key in ("client_secret", "api_key"):
        value = settings.get(key)
        if value is not None and not value.startswith(("env:", "file:")):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} must be a reference, not the secret itself: use env:NAME or file:PATH "
                f"(e.g. {flag} env:{name.upper().replace('-', '_')}_{key.upper()})."
            )
    path = _target_path(config_path)
    _append_credential(path, name, settings)
    click.echo(f"added [credentials.{name}] to {path}")
    click.echo(f"next: {_next_step(load_config(path).credential_config(name))}")


def _next_step(settings: CredentialConfig) -> str:
    """What to run to give a credential its first token: export the secrets it references
    that are not set yet, then log in (or, for grants that need no person, ask for a token)."""
    unset = [
        str(value)[4:]
        for key in ("client_id", "client_secret", "api_key")
        if str(value := settings.settings.get(key, "")).startswith("env:")
        and not os.environ.get(str(value)[4:])
    ]
    exports = "".join(f"export {var}=...; " for var in unset)
    if settings.grant == "refresh_token":
        return f"{exports}tokenward login {settings.name}"
    return f"{exports}tokenward token {settings.name}"


@cli.command()
def presets() -> None:
    """List the provider presets tokenward ships.

    \b
    Example:
      tokenward presets
      tokenward add ml --preset mercadolibre --client-id 123 --client-secret env:ML_SECRET
    """
    from rich.console import Console
    from rich.table import Table

    table = Table("preset", "grant", "description")
    for name in preset_names():
        data = load_preset(name)
        table.add_row(name, data.get("grant", "refresh_token"), data.get("description", ""))
    Console().print(table)


# -- token, refresh, status -----------------------------------------------------------------------
@cli.command()
@click.argument("name")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Give up after this many seconds when the provider does not answer (default: 30).",
)
@_config_option
def token(name: str, timeout: float | None, config_path: Path | None) -> None:
    """Print a valid access token for NAME, and nothing else, on stdout.

    A session-scoped credential (HeyGen) gets a new token on every call: such a token must
    never serve two sessions. While the provider is retried, a terminal shows each attempt.

    \b
    Example:
      curl -H "Authorization: Bearer $(tokenward token ml)" https://api.mercadolibre.com/users/me
      tokenward token ml --timeout 5      # fail fast when the provider is unreachable
    """
    from .configured import Credential

    config = _load(config_path)
    settings = config.credential_config(name)
    if settings.session_scoped:  # minted for this call alone: never cached, never stored
        from .sessions import mint

        with _retry_progress():
            options = _deadline(timeout)
            minted = mint(settings.source(), name, retry=options.get("retry"))
        click.echo(minted.access_token)
        return
    manager = settings.manager(config.store_for(settings), **_deadline(timeout))
    with Credential(settings, manager) as cred, _retry_progress():
        click.echo(cred.token().access_token)


def _deadline(timeout: float | None) -> dict[str, Any]:
    """TokenManager options bounding a call to `timeout` seconds: retries, each request, and
    the wait for another process's refresh."""
    if timeout is None:
        return {}
    from .retry import RetryPolicy

    return {
        "retry": RetryPolicy(deadline=timeout),
        "timeout": httpx2.Timeout(min(timeout, 10.0), connect=min(timeout, 5.0)),
        "lease_wait": timeout,
    }


class _RetryProgress(logging.Handler):
    """Prints each failed attempt at the provider (the `refresh.failed` transient events)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) != "refresh.failed":
            return
        fields = getattr(record, "tokenward", {})
        if fields.get("kind") != "transient":
            return
        wait = fields.get("retry_in")
        then = f"retrying in {wait:.1f}s" if wait is not None else "giving up"
        name = getattr(record, "credential", "?")
        click.echo(
            f"{name}: attempt {fields.get('attempt')} failed ({fields.get('detail')}); {then}",
            err=True,
        )


@contextlib.contextmanager
def _retry_progress() -> Iterator[None]:
    """Show retries on a terminal (stderr), where a silent 30-second wait looks like a hang;
    pipes and scripts keep the one-line error only."""
    from .events import logger

    if not sys.stderr.isatty():
        debug = click.get_current_context().meta.get("tokenward.debug")
        quiet = None if debug else logging.NullHandler()  # else logging's lastResort prints
        if quiet is not None:
            logger.addHandler(quiet)
        try:
            yield
        finally:
            if quiet is not None:
                logger.removeHandler(quiet)
        return
    handler: logging.Handler = _RetryProgress(logging.INFO)
    logger.addHandler(handler)
    previous = logger.level
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@cli.command()
@click.argument("name")
@_config_option
def refresh(name: str, config_path: Path | None) -> None:
    """Refresh NAME now, whatever its expiry (one refresh even if others run at once).

    \b
    Example:
      tokenward refresh ml
    """
    from .configured import credential

    with credential(name, _load(config_path)) as cred:
        fresh = cred.manager.refresh()
    click.echo(f"refreshed {name}: token {fresh.fingerprint}, {_expires(fresh.expires_at)}")


def _expires(expires_at: float | None, short: bool = False) -> str:
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
                "preset": settings.settings.get("preset"),
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
                    "preset": owner.settings.get("preset") if owner else None,
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--prefix",
    default=None,
    help="List every stored key starting with this (e.g. `ml:` for per-user records).",
)
@_config_option
def status(as_json: bool, prefix: str | None, config_path: Path | None) -> None:
    """Show every configured credential: state, expiry, refreshes, last error. No secrets.

    \b
    Example:
      tokenward status
      tokenward status --prefix 'ml:'
      tokenward status --json | jq '.[] | select(.state != "ok")'
    """
    config = _load(config_path)
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
            _expires(row["expires_at"], short=not wide) if row["state"] != "empty" else "-",
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
        return f"{row['name']} has no token yet; next: {_next_step(settings)}"
    if row["state"] == "needs_reauth":
        return f"{row['name']} needs a login; next: tokenward login {row['name']}"
    return None


# -- login ----------------------------------------------------------------------------------------
def _show_url(url: str, redirect_uri: str, timeout: float) -> None:
    click.echo(f"Open this URL to authorize tokenward:\n{url}", err=True)
    click.echo(
        f"Waiting up to {timeout:.0f}s for the provider's redirect to {redirect_uri} "
        "(Ctrl-C cancels).",
        err=True,
    )


def _show_device(device: DeviceAuthorization) -> None:
    where = device.verification_uri_complete or device.verification_uri
    click.echo(f"Go to {where} and enter the code:\n{device.user_code}", err=True)


@cli.command()
@click.argument("name")
@click.option("--device", is_flag=True, help="Use the device flow (RFC 8628): no browser here.")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--port", type=int, default=None, help="Callback port (default: redirect_port/0).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--name", "as_name", default=None, help="MCP login: the credential name to store.")
@click.option("--scope", default=None, help="MCP login: the scope to request.")
@_config_option
def login(
    name: str,
    device: bool,
    no_browser: bool,
    port: int | None,
    timeout: float,
    as_name: str | None,
    scope: str | None,
    config_path: Path | None,
) -> None:
    """Log in to NAME (authorization code + PKCE, or --device) and store the tokens.

    The browser flow listens once on 127.0.0.1 for the redirect.

    \b
    Example:
      tokenward login ml                  # opens the browser
      tokenward login ml --no-browser     # prints the URL only
      tokenward login gh --device         # headless: enter a code on another device
      tokenward login https://mcp.example.com/mcp --name mcp-example   # an MCP server
    """
    if _login_mcp(name, as_name, device, not no_browser, port, scope, timeout, config_path):
        return
    from .login import login as log_in

    record = log_in(
        name,
        _load(config_path),
        device=device,
        port=port,
        browser=not no_browser,
        timeout=timeout,
        on_url=lambda url, redirect_uri: _show_url(url, redirect_uri, timeout),
        on_device=_show_device,
    )
    refresh = "with" if record.refresh_token else "WITHOUT"
    click.echo(
        f"logged in {name}: token {fingerprint(record.access_token)} "
        f"(version {record.version}), {refresh} a refresh token"
    )


def _login_mcp(
    argument: str,
    as_name: str | None,
    device: bool,
    browser: bool,
    port: int | None,
    scope: str | None,
    timeout: float,
    config_path: Path | None,
) -> bool:
    """An MCP server's URL (or a `grant = "mcp"` credential): the login in tokenward.mcp_login,
    the credential added to the configuration first when it is new. False: not an MCP login."""
    from . import mcp_login

    config: Config | None = None
    try:
        config = _load(config_path)
    except ConfigError:
        # A URL on a machine without a configuration: the login starts one.
        if not mcp_login.is_server_url(argument) or _target_path(config_path).exists():
            raise
    target = mcp_login.mcp_target(argument, as_name, config)
    if target is None:
        return False
    if device:
        raise ConfigError("MCP servers offer no device flow (RFC 8628): log in with the browser")
    name, server_url = target
    if config is None or name not in config.credentials:
        path = config.path if config is not None and config.path else _target_path(config_path)
        _append_credential(path, name, {"grant": "mcp", "mcp_server": server_url})
        config = load_config(path)
    store = config.store_for(config.credential_config(name))
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    record = mcp_login.login(
        server_url, name, store, say=say, browser=browser, port=port, scope=scope, timeout=timeout
    )
    click.echo(mcp_login.summary(name, record))
    return True


# -- revoke, import-env ---------------------------------------------------------------------------
@cli.command()
@click.argument("name")
@click.option(
    "--local",
    is_flag=True,
    help="Only forget the stored tokens; do not ask the provider (which may have no endpoint).",
)
@_config_option
def revoke(name: str, local: bool, config_path: Path | None) -> None:
    """Revoke NAME's tokens at the provider (RFC 7009) and mark it as needing a login.

    With --local, or for a provider without a revocation endpoint, the stored tokens are
    forgotten here only: the provider keeps them valid until they expire.

    \b
    Example:
      tokenward revoke google
      tokenward revoke ml --local         # MercadoLibre has no revocation endpoint
    """
    from .login import revoke as revoke_grant

    command = "`tokenward revoke --local`" if local else "`tokenward revoke`"
    record = revoke_grant(name, _load(config_path), local=local, via=f" with {command}")
    if record is None:
        click.echo(f"{name}: nothing stored, nothing to revoke")
        return
    where = "forgot the stored tokens of" if local else "revoked"
    click.echo(f"{where} {name}; next: `tokenward login {name}` to use it again")


def _read_env(path: Path) -> dict[str, str]:
    """`NAME=value` pairs of a .env file (quotes removed), enough to import credentials."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#") or "=" not in text:
            continue
        key, _, value = text.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@cli.command("import-env")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default="ml", show_default=True, help="Credential name.")
@click.option("--preset", default="mercadolibre", show_default=True, help="Provider preset.")
@click.option(
    "--client-id-var", default="ML_CLIENT_ID", show_default=True, help="Variable of the client id."
)
@click.option(
    "--client-secret-var",
    default="ML_CLIENT_SECRET",
    show_default=True,
    help="Variable of the client secret (referenced as env:VAR, never copied).",
)
@click.option(
    "--refresh-token-var",
    default="ML_REFRESH_TOKEN",
    show_default=True,
    help="Variable of the refresh token (kept up to date in the file).",
)
@click.option(
    "--access-token-var",
    default="ML_ACCESS_TOKEN",
    show_default=True,
    help="Variable of the access token (kept up to date in the file).",
)
@click.option("--base-url", default=None, help="Override the preset's base URL (a sandbox).")
@_config_option
def import_env(
    file: Path,
    name: str,
    preset: str,
    client_id_var: str,
    client_secret_var: str,
    refresh_token_var: str,
    access_token_var: str,
    base_url: str | None,
    config_path: Path | None,
) -> None:
    """Take over a .env holding ML_CLIENT_ID, ML_CLIENT_SECRET, ML_REFRESH_TOKEN, ML_ACCESS_TOKEN.

    The .env becomes the credential's store: tokenward keeps ML_ACCESS_TOKEN and
    ML_REFRESH_TOKEN up to date in it, so scripts reading the .env keep working. The client
    secret stays in the .env and is referenced as env:ML_CLIENT_SECRET.

    \b
    Example:
      tokenward import-env .env
      tokenward import-env app.env --name shop --client-id-var APP_ID --client-secret-var APP_KEY
    """
    values = _read_env(file)
    for var in (client_id_var, refresh_token_var):
        if not values.get(var):
            raise ConfigError(f"{file}: {var} is missing or empty; name it with the --*-var flags.")
    variables = {"refresh_token": refresh_token_var, "access_token": access_token_var}
    settings: dict[str, Any] = {
        "preset": preset,
        "client_id": values[client_id_var],
        "client_secret": f"env:{client_secret_var}",
        "store": f"dotenv://{file.resolve()}",
        "store_variables": variables,
    }
    if base_url:
        settings["base_url"] = base_url
    path = _target_path(config_path)
    _append_credential(path, name, settings)
    config = load_config(path)
    cred_settings = config.credential_config(name)
    # Seeding touches only the store, and the real source would need the client secret, which
    # may not be exported yet: a placeholder source does. The imported access token's age is
    # unknown, so it is seeded as expired: the first use refreshes (and rewrites the .env).
    from .manager import TokenManager
    from .sources import FunctionSource

    store = config.store_for(cred_settings)
    TokenManager(name, FunctionSource(lambda _token: ""), store).seed(
        refresh_token=values[refresh_token_var],
        access_token=values.get(access_token_var) or None,
        expires_in=0,
    )
    click.echo(f"imported {file} as [credentials.{name}] in {path}")
    _explain_dotenv_additions(file, sorted(set(_read_env(file)) - set(values)))
    click.echo(
        f"next: export {client_secret_var} (e.g. `set -a; . {file}; set +a`), "
        f"then tokenward token {name}"
    )


def _explain_dotenv_additions(file: Path, added: list[str]) -> None:
    """Say what tokenward keeps in and beside a .env it took over, and what to .gitignore."""
    from .stores.file import sidecar

    lock, leases = (sidecar(file, suffix).name for suffix in (".lock", ".leases"))
    click.echo(
        f"tokenward added {', '.join(added) or 'no variable'} to {file.name} (its record of "
        f"the tokens: version, expiry, state) and keeps {lock} and {leases} beside it "
        f"(refresh coordination). Keep them out of version control; .gitignore: "
        f"{file.name} {lock} {leases}"
    )


cli.add_command(rekey)  # `tokenward rekey` lives in cli_rekey.py (encryption at rest)


def _on_sigterm(action: Callable[[], None]) -> Any:
    """Run `action` on SIGTERM instead of dying; the previous handler (None off the main
    thread, where Python cannot install one)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda _signum, _frame: action())


@cli.command("refresher")
@click.option(
    "--credential",
    "names",
    multiple=True,
    help="Only this credential (repeatable). Default: every configured one.",
)
@click.option("--concurrency", type=int, default=8, show_default=True, help="Refreshes at once.")
@click.option(
    "--keepalive-days",
    type=float,
    default=30.0,
    show_default=True,
    help="Refresh a credential idle this long, so its refresh token never lapses.",
)
@click.option("--claim-ttl", type=float, default=60.0, show_default=True, help="Seconds.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--backfill", is_flag=True, help="First queue every record already stored.")
@_config_option
def refresher(
    names: tuple[str, ...],
    concurrency: int,
    keepalive_days: float,
    claim_ttl: float,
    duration: float | None,
    backfill: bool,
    config_path: Path | None,
) -> None:
    """Refresh stored credentials before they expire. Run one on every host or replica: they
    share the store's due-queue, and each credential is still refreshed once per expiry.

    Keys `NAME` and `NAME:anything` (one record per end user) use credential NAME's settings.

    \b
    Example:
      tokenward refresher --concurrency 16
    """
    from .refresher import Refresher
    from .sources.base import Source

    config = _load(config_path)
    chosen = [config.credential_config(name) for name in names] or list(config.credentials.values())
    groups: dict[int, list[CredentialConfig]] = {}
    for settings in chosen:
        groups.setdefault(id(config.store_for(settings)), []).append(settings)
    stop = threading.Event()
    refreshers: list[Refresher] = []
    for members in groups.values():
        sources: dict[str, Source] = {}
        by_name = {settings.name: settings for settings in members}

        def source_for_key(
            key: str,
            by_name: dict[str, CredentialConfig] = by_name,
            cache: dict[str, Source] = sources,
        ) -> Source | None:
            name = key.split(":", 1)[0]
            if name not in by_name:
                return None
            if name not in cache:
                cache[name] = by_name[name].source()
            return cache[name]

        worker = Refresher(
            config.store_for(members[0]),
            source_for_key,
            concurrency=concurrency,
            keepalive_after=keepalive_days * 86400,
            claim_ttl=claim_ttl,
        )
        if backfill:
            queued = worker.backfill(sorted(by_name))
            click.echo(f"queued {queued} stored record(s) of {', '.join(sorted(by_name))}")
        refreshers.append(worker)
    threads = [
        threading.Thread(target=worker.run, args=(stop, duration), daemon=True)
        for worker in refreshers
    ]
    # SIGTERM (systemd, Kubernetes, docker stop) drains like Ctrl-C: the refreshes in flight
    # reach the store (their answers may carry the only valid refresh tokens) before exit.
    previous = _on_sigterm(stop.set)
    for thread in threads:
        thread.start()
    click.echo(f"refresher running for {len(chosen)} credential(s); Ctrl-C stops it", err=True)
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        for worker in refreshers:
            worker.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        totals: dict[str, int] = {}
        for worker in refreshers:
            for name, value in worker.stats.snapshot().items():
                totals[name] = totals.get(name, 0) + value
        click.echo(json.dumps(totals))


# -- broker (tokenward.broker; `serve` needs the `broker` extra) ----------------------------------
from .broker.cli import AddressInUse  # noqa: E402 - registered after the core commands
from .broker.cli import broker as _broker_group  # noqa: E402
from .broker.cli import serve as _serve  # noqa: E402

cli.add_command(_serve)
cli.add_command(_broker_group)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="tokenward")


if __name__ == "__main__":
    main()
