"""`tokenward login`, `revoke` and `import-env`: parsing and printing around the library's
`tokenward.login` (browser and device logins, revocation), `tokenward.mcp_login` (MCP servers)
and `tokenward.configure` (a `.env` taken over).

Why its own module: these commands only choose what to call and what to print; keeping them
together keeps cli.py under ~500 lines.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli_base import config_option
from .config import Config, ConfigError, load_config
from .configure import append_credential, target_path
from .sources.authorization import DeviceAuthorization
from .token import fingerprint

__all__ = ["import_env", "login", "revoke"]


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


@click.command()
@click.argument("name")
@click.option("--device", is_flag=True, help="Use the device flow (RFC 8628): no browser here.")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--port", type=int, default=None, help="Callback port (default: redirect_port/0).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--name", "as_name", default=None, help="MCP login: the credential name to store.")
@click.option("--scope", default=None, help="MCP login: the scope to request.")
@config_option
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
        load_config(config_path),
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
        config = load_config(config_path)
    except ConfigError:
        # A URL on a machine without a configuration: the login starts one.
        if not mcp_login.is_server_url(argument) or target_path(config_path).exists():
            raise
    target = mcp_login.mcp_target(argument, as_name, config)
    if target is None:
        return False
    if device:
        raise ConfigError("MCP servers offer no device flow (RFC 8628): log in with the browser")
    name, server_url = target
    if config is None or name not in config.credentials:
        path = config.path if config is not None and config.path else target_path(config_path)
        append_credential(path, name, {"grant": "mcp", "mcp_server": server_url})
        config = load_config(path)
    store = config.store_for(config.credential_config(name))
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    record = mcp_login.login(
        server_url, name, store, say=say, browser=browser, port=port, scope=scope, timeout=timeout
    )
    click.echo(mcp_login.summary(name, record))
    return True


@click.command()
@click.argument("name")
@click.option(
    "--local",
    is_flag=True,
    help="Only forget the stored tokens; do not ask the provider (which may have no endpoint).",
)
@config_option
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
    record = revoke_grant(name, load_config(config_path), local=local, via=f" with {command}")
    if record is None:
        click.echo(f"{name}: nothing stored, nothing to revoke")
        return
    where = "forgot the stored tokens of" if local else "revoked"
    click.echo(f"{where} {name}; next: `tokenward login {name}` to use it again")


@click.command("import-env")
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
@config_option
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
    from .configure import import_env as take_over

    imported = take_over(
        file,
        name=name,
        preset=preset,
        client_id_var=client_id_var,
        client_secret_var=client_secret_var,
        refresh_token_var=refresh_token_var,
        access_token_var=access_token_var,
        base_url=base_url,
        config_path=config_path,
    )
    click.echo(f"imported {file} as [credentials.{name}] in {imported.config_path}")
    _explain_dotenv_additions(file, imported.added)
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
