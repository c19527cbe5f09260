"""Run the emulator over real HTTP on loopback, in a background thread of the test process.

Real sockets matter: timeouts, lost answers and connection reuse only show up over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

import uvicorn

from tokenward.testing.emulator import Emulator, create_app

__all__ = ["EmulatorServer"]


class _FastStopServer(uvicorn.Server):
    """uvicorn.Server that stops in milliseconds instead of ~0.2 s.

    Stock uvicorn polls for exit every 0.1 s and sleeps another 0.1 s in shutdown; with a
    server per test that is most of a test suite's run time. Here exit is an event and the
    shutdown polls quickly. Only attributes uvicorn itself uses (``servers``,
    ``server_state``, ``lifespan``) are touched.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_loop: asyncio.AbstractEventLoop | None = None
        self._exit_event: asyncio.Event | None = None

    def request_exit(self) -> None:
        """Thread-safe: ask the serving loop to shut down now."""
        self.should_exit = True
        loop, event = self._exit_loop, self._exit_event
        if loop is not None and event is not None and not loop.is_closed():
            # RuntimeError: the loop closed in the meantime, so there is nothing left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def main_loop(self) -> None:
        self._exit_event = asyncio.Event()
        self._exit_loop = asyncio.get_running_loop()
        await self.on_tick(0)  # sets the Date header
        while not self.should_exit:
            try:
                await asyncio.wait_for(self._exit_event.wait(), timeout=1.0)
            except TimeoutError:
                await self.on_tick(0)  # refresh the Date header once a second

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # idle keep-alive connections close at once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.timeout_graceful_shutdown or 0)
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()
        await self.lifespan.shutdown()


class EmulatorServer:
    """An :class:`Emulator` served by uvicorn in a daemon thread; usable as a context manager.

    :meth:`start` binds the socket itself before handing it to uvicorn, so with ``port=0`` the
    real port is known at once and never races with another process.
    """

    def __init__(
        self,
        emulator: Emulator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        graceful_timeout: float = 2.0,
    ) -> None:
        self.emulator = emulator if emulator is not None else Emulator()
        self.host = host
        self._requested_port = port
        self._graceful_timeout = graceful_timeout
        self._closing = threading.Event()
        self._sock: socket.socket | None = None
        self._server: _FastStopServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._port: int | None = None

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    @property
    def authorize_url(self) -> str:
        return self.url + "/authorize"

    @property
    def revoke_url(self) -> str:
        return self.url + "/oauth/revoke"

    @property
    def device_code_url(self) -> str:
        return self.url + "/oauth/device/code"

    @property
    def session_token_url(self) -> str:
        """HeyGen-style ``streaming.create_token`` endpoint."""
        return self.url + "/v1/streaming.create_token"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        """Bind, start serving in a daemon thread, and return once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it every keep-alive request waits ~40 ms (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._sock = sock
        self._port = int(sock.getsockname()[1])
        self._closing.clear()
        config = uvicorn.Config(
            create_app(self.emulator, self._closing),
            log_config=None,  # leave the host application's logging alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=int(max(1, self._graceful_timeout)),
        )
        server = _FastStopServer(config)
        self._server = server
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name="tokenward-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if self._error is not None or not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("emulator server failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("emulator server did not start in time")
            time.sleep(0.005)
        return self

    def _run(self, server: _FastStopServer, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to start(); a thread cannot raise to its caller
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: wake delayed answers, let uvicorn finish, join the thread."""
        self._closing.set()
        if self._server is not None:
            self._server.request_exit()
        if self._thread is not None:
            self._thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None

    def __enter__(self) -> EmulatorServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "unbound"
        return f"EmulatorServer({where}, running={self.running})"
