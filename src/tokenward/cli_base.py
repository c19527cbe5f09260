"""The `tokenward` group's machinery: exit codes, one-line errors, warnings, and the global
options that work before and after a command.

Why apart from cli.py: every command module (cli.py, cli_login.py, cli_status.py,
cli_rekey.py) needs the shared `--config` option and the error mapping, and cli.py itself keeps
only the group and the commands that fit in it (no module over ~500 lines).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx2

from .config import CONFIG_ENV, ConfigError, InlineSecretWarning, ReadableSecretsWarning
from .errors import (
    CredentialNotSeeded,
    MalformedTokenResponse,
    ReauthorizationRequired,
    RefreshFailed,
    RequestRejected,
    TokenwardError,
    TransientError,
)
from .sources.authorization import AuthorizationDenied

__all__ = [
    "EXIT_ADDRESS_IN_USE",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_REAUTH",
    "EXIT_UNREACHABLE",
    "Cli",
    "apply_globals",
    "config_option",
]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_REAUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_ADDRESS_IN_USE = 5  # `serve`: the listen address is taken


def _exit_code(exc: BaseException) -> tuple[int, str]:
    """Exit code and a fix hint for an exception reaching the top."""
    from .broker.cli import AddressInUse  # the `broker` package registers `serve`

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


class Cli(click.Group):
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


def apply_globals(ctx: click.Context, config_path: Path | None, as_json: bool, debug: bool) -> None:
    """The group's own options: `--debug` for the whole run; `--config` and `--json` become
    the subcommand's defaults (`--json` refused for a command without JSON output)."""
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


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Configuration file (default: ${CONFIG_ENV}, ./tokenward.toml, user config dir).",
    )(fn)
