"""A minimal HTTP/1.1 server on raw asyncio, run in its own process by the hot-path benchmark.

It answers every request with 200 and a tiny JSON body, as fast as it can, keeping connections
alive; `POST /oauth/token` gets a token response (a one-hour access token) so that every OAuth
client can fetch its first token here. It runs in a separate process so that its CPU time is
not counted as the client's. The first line on stdout is the port.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

_OK = b'{"ok":true}'
_TOKEN = (
    b'{"access_token":"hot-path-access-token-0123456789abcdef","token_type":"Bearer",'
    b'"expires_in":3600,"refresh_token":"hot-path-refresh-token"}'
)


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


RESPONSE_OK = _response(_OK)
RESPONSE_TOKEN = _response(_TOKEN)


class RawHttp(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection on raw asyncio: each complete request is answered
    with the bytes `answer` returns (this server's: a token or `{"ok":true}`; the bench's token
    provider subclasses it)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (taken := take_request(self._buffer)) is not None:
            head, body, self._buffer = taken
            assert self._transport is not None
            self._transport.write(self.answer(head, body))

    def answer(self, head: bytes, body: bytes) -> bytes:
        return RESPONSE_TOKEN if head.startswith(b"POST /oauth/token") else RESPONSE_OK


def take_request(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The first complete request in `buffer` as (head, body, what follows), or None while it
    is incomplete (HTTP/1.1 with Content-Length bodies: all our clients send)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return head, buffer[end + 4 : total], buffer[total:]


async def serve(protocol: Callable[[], asyncio.Protocol] = RawHttp) -> None:
    """Serve `protocol` on a free loopback port, printed first on stdout, until the parent
    closes our stdin."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(serve())
