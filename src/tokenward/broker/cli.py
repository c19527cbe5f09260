"""`tokenward serve` and `tokenward broker add-client`.

Client keys live as SHA-256 hashes in the configuration file's `[broker.clients.NAME]` table,
not in the store: the file already holds the policies every replica reads, a hash is not a
secret (so the file stays shareable), and adding or revoking a client is a reviewed edit of
one file followed by a restart. The key itself is printed once, and never stored.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import click

from ..config import CONFIG_ENV, Config, ConfigError, find_config
from .config import (
    BrokerConfig,
    client_table,
    hash_key,
    known_client_names,
    load_broker,
    new_key,
)

__all__ = ["AddressInUse", "broker", "serve"]

_CONFIG_HELP = f"Configuration file (default: ${CONFIG_ENV}, ./tokenward.toml, user config dir)."


class AddressInUse(ConfigError):
    """`serve` cannot listen: another process holds the address (its own exit code, 5)."""


@click.command()
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option("--host", default=None, help="Listen address (default: [broker] host).")
@click.option("--port", type=int, default=None, help="Listen port (default: [broker] port).")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    help="uvicorn's log level: critical, error, warning, info, debug, trace.",
)
def serve(config_path: Path | None, host: str | None, port: int | None, log_level: str) -> None:
    """Run the broker: proxy, token vending, sessions (needs the `broker` extra).

    \b
    Example:
      tokenward broker add-client web --credential ml
      tokenward serve --port 8421
      curl -H "Authorization: Bearer twk_..." http://127.0.0.1:8421/v1/proxy/ml/users/me
    """
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the broker needs the 'broker' extra: pip install 'tokenward[broker]' ({exc.name})"
        ) from None
    _audit_to_stderr()
    config, settings = load_broker(config_path)
    # Bound here, not by uvicorn: a busy port is then one clear error with its own exit code,
    # and port 0 (any free port) can be announced before serving.
    sock = _listen(host or settings.host, settings.port if port is None else port)
    app = create_app(config, settings)
    _announce(config, settings, sock)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            proxy_headers=False,  # a client cannot pose as another address through headers
            server_header=False,
        )
    )
    server.run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or an error that names the address and the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"cannot listen on {host}:{port}: the port is already in use (another "
                f"`tokenward serve`?). Stop that process, or pick another port: --port N "
                "or [broker] port."
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}. Check [broker] host/port "
            "(or --host/--port)."
        ) from None
    sock.set_inheritable(True)
    return sock


def _announce(config: Config, settings: BrokerConfig, sock: socket.socket) -> None:
    """What the broker loaded, on stderr before it serves; a warning when no client can call."""
    host, port = sock.getsockname()[:2]
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    names = sorted(config.credentials)
    stores = sorted({config.store_for(config.credentials[name]).location for name in names})
    lines = [
        f"tokenward serve: configuration {config.path}",
        f"  credentials: {', '.join(names) or 'none'}",
        f"  store: {', '.join(stores) or 'none (no credential)'}",
        f"  clients: {', '.join(client.name for client in settings.clients) or 'none'}",
    ]
    if settings.examples:
        lines.append(f"  example page: {base}/examples/browser-session/")
    lines.append(f"  listening on {base} (Ctrl-C stops)")
    if not settings.clients:
        first = names[0] if names else "NAME"
        lines.append(
            "warning: no client is configured ([broker.clients]), so every /v1 call will be "
            f"answered 401. Add one: tokenward broker add-client web --credential {first}"
        )
    if not names:
        lines.append(
            "warning: no credential is configured; add one: tokenward add NAME --preset PRESET"
        )
    click.echo("\n".join(lines), err=True)


def _audit_to_stderr() -> None:
    """Show tokenward events and the audit log (`tokenward.audit`) next to uvicorn's lines,
    unless the host application configured logging itself."""
    logger = logging.getLogger("tokenward")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@click.group()
def broker() -> None:
    """Manage broker clients."""


@broker.command("add-client")
@click.argument("name")
@click.option("--credential", "credentials", multiple=True, help="A credential it may use.")
@click.option("--policy", default=None, help="A [broker.policies.NAME] to start from.")
@click.option("--raw-tokens", is_flag=True, help="May receive raw tokens (token vending).")
@click.option("--origin", "origins", multiple=True, help="An allowed browser origin (CORS).")
@click.option("--max-sessions", type=int, default=None, help="Concurrent session quota.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
def add_client(
    name: str,
    credentials: tuple[str, ...],
    policy: str | None,
    raw_tokens: bool,
    origins: tuple[str, ...],
    max_sessions: int | None,
    config_path: Path | None,
) -> None:
    """Create client NAME: print its key once, store only the key's hash.

    \b
    Example:
      tokenward broker add-client web --credential avatar --origin https://app.example.com \\
          --max-sessions 2
    """
    path = find_config(config_path)
    if name in known_client_names(path):
        raise ConfigError(f"{path}: [broker.clients.{name}] exists already; pick another name")
    key = new_key()
    text = client_table(
        name,
        hash_key(key),
        policy=policy,
        credentials=credentials,
        raw_tokens=raw_tokens,
        origins=origins,
        max_sessions=max_sessions,
    )
    original = path.read_text(encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
    try:
        load_broker(path)  # the new table must parse (an unknown policy name, ...)
    except ConfigError:
        _restore(path, original)
        raise
    click.echo(key)
    click.echo(
        f"added [broker.clients.{name}] to {path}; the key above is shown only this once",
        err=True,
    )


def _restore(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
