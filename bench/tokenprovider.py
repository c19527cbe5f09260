"""A minimal rotating OAuth token endpoint on raw asyncio, for the refresher CPU benchmark.

The provider emulator (tokenward.testing.emulator) models a great deal (accounts, clocks,
faults, sessions) on a full ASGI stack; at thousands of refreshes per second its CPU, not the
refresher's, would set the pace. This server does only what a refresher depends on: it answers
`POST /token` with `grant_type=refresh_token`, rotates the refresh token (single use: a second
use gets 400 `invalid_grant`) and counts. Refresh tokens that start with `seed-` are accepted
once without having been issued here, so millions of credentials can be seeded straight into a
store without a round trip each.

`GET /counters` answers the counts and this process's CPU seconds, so the benchmark reports the
provider's cost separately from the refresher's. It runs in its own process; the first line on
stdout is the port; it serves until stdin closes. Written by hand (not on Starlette/uvicorn)
because the point is to cost next to nothing per request.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from urllib.parse import parse_qsl

from bench.fastserver import RawHttp, serve

_HEAD = "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"


class Provider:
    """The token endpoint's state: which refresh tokens are spent, what it issued, counts."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self.issued: set[str] = set()
        self.spent: set[str] = set()
        self.counts = {"requests": 0, "refreshes": 0, "invalid_grant": 0, "bad_requests": 0}
        self._next = 0

    def token(self, body: bytes) -> tuple[str, dict[str, object]]:
        """The status line and JSON body answering one token request."""
        self.counts["requests"] += 1
        form = dict(parse_qsl(body.decode("ascii", "replace")))
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            self.counts["bad_requests"] += 1
            return "400 Bad Request", {"error": "invalid_request"}
        used = form["refresh_token"]
        known = used in self.issued or used.startswith("seed-")
        if not known or used in self.spent:
            self.counts["invalid_grant"] += 1
            return "400 Bad Request", {"error": "invalid_grant"}
        self.spent.add(used)
        self.issued.discard(used)
        self._next += 1
        fresh = f"rt-{self._next:012d}"
        self.issued.add(fresh)
        self.counts["refreshes"] += 1
        answer = {
            "access_token": f"at-{self._next:012d}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": fresh,
        }
        return "200 OK", answer

    def counters(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {**self.counts, "cpu_s": usage.ru_utime + usage.ru_stime}


class _Http(RawHttp):
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self._provider = provider

    def answer(self, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"POST /token"):
            status, answer = self._provider.token(body)
        elif head.startswith(b"GET /counters"):
            status, answer = "200 OK", self._provider.counters()
        else:
            status, answer = "404 Not Found", {"error": "not_found"}
        payload = json.dumps(answer).encode()
        return _HEAD.format(status=status, length=len(payload)).encode() + payload


if __name__ == "__main__":
    provider = Provider(int(sys.argv[1]) if len(sys.argv) > 1 else 3600)
    asyncio.run(serve(lambda: _Http(provider)))
