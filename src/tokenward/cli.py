"""`tokenward` command line: configure credentials, log in, print tokens, show their state.

Why a CLI: the first login (browser or device code), a look at "which credential is about to
need a person", and `curl -H "Authorization: Bearer $(tokenward token ml)"` are things people
do by hand. Output contract: `token` prints the token and nothing else on stdout; every error is
one sentence plus the fix on stderr, with a distinct exit code:

    0 ok, 1 other failure, 2 usage or configuration error, 3 re-authorization required,
    4 provider unreachable, 5 `serve`: address already in use

No command prints a secret except `token` (which exists to do so); tokens are shown by
fingerprint. Tracebacks only with `--debug`.

The commands parse and print; what they do is library code that Python programs call too:
`tokenward.login` (logins, revocation), `tokenward.configure` (writing tokenward.toml,
`import-env`), `tokenward.refresher.ConfiguredRefreshers`. The group's machinery (exit codes,
global options) is in cli_base.py; `login`/`revoke`/`import-env` in cli_login.py, `status` in
cli_status.py, `rekey` in cli_rekey.py, `serve`/`broker` in broker/cli.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx2

from .cli_base import (
    EXIT_ADDRESS_IN_USE,
    EXIT_CONFIG,
    EXIT_REAUTH,
    EXIT_UNREACHABLE,
    Cli,
    apply_globals,
    config_option,
)
from .cli_login import import_env, login, revoke
from .cli_rekey import rekey
from .cli_status import expires, next_step, status
from .config import CONFIG_ENV, ConfigError, load_config, load_preset, preset_names
from .configure import STARTER, append_credential, target_path, write_private

if TYPE_CHECKING:
    from .events import Event
    from .refresher import Refresher

__all__ = [
    "EXIT_ADDRESS_IN_USE",
    "EXIT_CONFIG",
    "EXIT_REAUTH",
    "EXIT_UNREACHABLE",
    "cli",
    "main",
]


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
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
    apply_globals(ctx, config_path, as_json, debug)


# -- init, add, presets ---------------------------------------------------------------------------
@cli.command()
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path | None, force: bool) -> None:
    """Write a commented starter configuration (mode 0600).

    \b
    Example:
      tokenward init                      # ./tokenward.toml
      tokenward init --config ~/.config/tokenward/config.toml
    """
    path = target_path(config_path)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; edit it, or pass --force to overwrite it.")
    write_private(path, STARTER)
    click.echo(f"wrote {path}; next: tokenward add NAME --preset PRESET")


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
@config_option
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
    path = target_path(config_path)
    append_credential(path, name, settings)
    click.echo(f"added [credentials.{name}] to {path}")
    click.echo(f"next: {next_step(load_config(path).credential_config(name))}")


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
@config_option
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

    config = load_config(config_path)
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


def _show_retry(event: Event) -> None:
    """Prints each failed attempt at the provider (the `refresh.failed` transient events)."""
    if event.name != "refresh.failed" or event.fields.get("kind") != "transient":
        return
    wait = event.fields.get("retry_in")
    then = f"retrying in {wait:.1f}s" if wait is not None else "giving up"
    click.echo(
        f"{event.credential}: attempt {event.fields.get('attempt')} failed "
        f"({event.fields.get('detail')}); {then}",
        err=True,
    )


@contextlib.contextmanager
def _retry_progress() -> Iterator[None]:
    """Show retries on a terminal (stderr), where a silent 30-second wait looks like a hang;
    pipes and scripts keep the one-line error only. Either way logging's lastResort must not
    print the raw events beside them (unless --debug asked for the log on a pipe). A
    subscriber, not a log handler: no change to the `tokenward` logger's level."""
    from .events import logger, subscribe

    tty = sys.stderr.isatty()
    debug = click.get_current_context().meta.get("tokenward.debug")
    quiet = logging.NullHandler() if tty or not debug else None
    if quiet is not None:
        logger.addHandler(quiet)
    try:
        if tty:
            with subscribe(_show_retry):
                yield
        else:
            yield
    finally:
        if quiet is not None:
            logger.removeHandler(quiet)


@cli.command()
@click.argument("name")
@config_option
def refresh(name: str, config_path: Path | None) -> None:
    """Refresh NAME now, whatever its expiry (one refresh even if others run at once).

    \b
    Example:
      tokenward refresh ml
    """
    from .configured import credential

    with credential(name, load_config(config_path)) as cred:
        fresh = cred.manager.refresh()
    click.echo(f"refreshed {name}: token {fresh.fingerprint}, {expires(fresh.expires_at)}")


cli.add_command(rekey)  # `tokenward rekey` lives in cli_rekey.py (encryption at rest)
cli.add_command(status)  # cli_status.py: the status table
for _command in (login, revoke, import_env):  # cli_login.py: around tokenward.login
    cli.add_command(_command)


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
@click.option("--concurrency", type=int, default=64, show_default=True, help="Refreshes at once.")
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
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus metrics (refreshes, lateness, claims, store errors) on this port.",
)
@click.option(
    "--metrics-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port."
)
@config_option
def refresher(
    names: tuple[str, ...],
    concurrency: int,
    keepalive_days: float,
    claim_ttl: float,
    duration: float | None,
    backfill: bool,
    metrics_port: int | None,
    metrics_address: str,
    config_path: Path | None,
) -> None:
    """Refresh stored credentials before they expire. Run one on every host or replica: they
    share the store's due-queue, and each credential is still refreshed once per expiry.

    Keys `NAME` and `NAME:anything` (one record per end user) use credential NAME's settings.
    On a terminal a status line shows what it does; `--metrics-port` serves the same counters
    to Prometheus.

    \b
    Example:
      tokenward refresher --concurrency 64 --metrics-port 9464
    """
    from .refresher import ConfiguredRefreshers

    refreshers = ConfiguredRefreshers(
        load_config(config_path),
        names,
        concurrency=concurrency,
        keepalive_after=keepalive_days * 86400,
        claim_ttl=claim_ttl,
    )
    if backfill:
        for queued, members in refreshers.backfill():
            click.echo(f"queued {queued} stored record(s) of {', '.join(members)}")
    stop = threading.Event()
    # SIGTERM (systemd, Kubernetes, docker stop) drains like Ctrl-C: the refreshes in flight
    # reach the store (their answers may carry the only valid refresh tokens) before exit.
    previous = _on_sigterm(stop.set)
    workers = [worker for worker, _names in refreshers.refreshers]
    if metrics_port is not None:
        _serve_refresher_metrics(workers, metrics_port, metrics_address)
    count = len(refreshers.credentials)
    click.echo(f"refresher running for {count} credential(s); Ctrl-C stops it", err=True)
    try:
        with _status_line(workers, stop):
            refreshers.run(stop, duration)
    except KeyboardInterrupt:
        pass
    finally:
        refreshers.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        click.echo(json.dumps(refreshers.totals()))


def _serve_refresher_metrics(workers: list[Refresher], port: int, address: str) -> None:
    from .refresher_metrics import serve_metrics

    try:
        serve_metrics(workers, port, address)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(f"cannot serve metrics on {address}:{port}: {exc}") from None
    click.echo(f"metrics on http://{address}:{port}/metrics", err=True)


@contextlib.contextmanager
def _status_line(workers: list[Refresher], stop: threading.Event) -> Iterator[None]:
    """On a terminal, rewrite one status line on stderr every second while the body runs."""
    from .refresher_metrics import StatusLine

    stream = sys.stderr
    if not stream.isatty():
        yield
        return
    line, done = StatusLine(workers), threading.Event()

    def show() -> None:
        while not done.wait(1.0) and not stop.is_set():
            stream.write("\r\x1b[2K" + line.render())
            stream.flush()

    thread = threading.Thread(target=show, name="tokenward-status", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        stream.write("\r\x1b[2K" + line.render() + "\n")


# -- broker (tokenward.broker; `serve` needs the `broker` extra) ----------------------------------
from .broker.cli import broker as _broker_group  # noqa: E402
from .broker.cli import serve as _serve  # noqa: E402

cli.add_command(_serve)
cli.add_command(_broker_group)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="tokenward")


if __name__ == "__main__":
    main()
