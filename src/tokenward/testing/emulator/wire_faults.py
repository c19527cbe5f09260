"""Faults on the wire: latency, holds, injected answers, lost answers (timeouts, answers sent too
late), and a careless provider that echoes secrets, around each faultable endpoint."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .holds import Fault
from .shapes import API_INVALID_TOKEN_BODY, DEFAULT_SCOPE, INVALID_GRANT_BODY, Reply, json_seconds
from .wire import respond

if TYPE_CHECKING:
    from .model import Emulator


class FaultRunner:
    """Runs an endpoint's work inside the faults and holds a test placed on it."""

    def __init__(self, emulator: Emulator, closing: threading.Event) -> None:
        self.emu = emulator
        self.closing = closing

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server shuts down (keeps stop() fast)."""
        deadline = time.monotonic() + seconds
        while not self.closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))

    async def held(self, request: Request, endpoint: str, stage: str) -> bool:
        """Wait at a hold the test placed on this endpoint and stage, if any. False: the client
        went away while held before processing (the provider never got to its request)."""
        hold = self.emu.take_hold(endpoint, stage)
        if hold is None:
            return True
        hold.agents.append(request.headers.get("user-agent"))
        watch = stage == "received"
        if watch:
            await request.body()  # cache it: is_disconnected() below must not eat the body
        hold.arrived.set()
        while not hold.released and not self.closing.is_set():
            if watch and not hold.client_gone.is_set() and await request.is_disconnected():
                hold.client_gone.set()
            await asyncio.sleep(0.002)
        return not (watch and hold.client_gone.is_set())

    def fault_response(self, fault: Fault, endpoint: str) -> Response | None:
        """Answer that replaces the real one, or None for delay-type faults."""
        name = fault.name
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(json_seconds(fault.retry_after))
        if name in ("500", "503"):
            message = "internal_error" if name == "500" else "service_unavailable"
            body = {"message": message, "error": message, "status": int(name), "cause": []}
            return JSONResponse(body, int(name), headers)
        if name == "429":
            body = {"message": "local_rate_limited", "error": "too_many_requests", "status": 429}
            return JSONResponse({**body, "cause": []}, 429, headers)
        if name == "html":
            page = "<html><body><h1>502 Bad Gateway</h1><p>upstream error</p></body></html>"
            return HTMLResponse(page, 200)
        if name == "garbage":
            return Response(b"\x00\xffnot json{{", 200, media_type="application/json")
        if name == "no_access_token":
            if endpoint == "session":
                return JSONResponse({"error": None, "data": {}}, 200)
            body = {
                "token_type": "Bearer",
                "expires_in": json_seconds(self.emu.access_lifetime),
                "scope": DEFAULT_SCOPE,
                "user_id": self.emu.user_id,
            }
            return JSONResponse(body, 200)
        if name == "invalid_grant":
            self.emu.count("invalid_grant")
            return JSONResponse(dict(INVALID_GRANT_BODY, cause=[]), 400)
        if name == "401":
            if endpoint == "session":
                return JSONResponse({"error": "invalid api key", "data": None}, 401)
            if self.emu.www_authenticate:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return JSONResponse(dict(API_INVALID_TOKEN_BODY, cause=[]), 401, headers)
        return None

    async def run_with_faults(
        self,
        request: Request,
        endpoint: str,
        latency: float,
        work: Callable[[], Awaitable[Reply]],
        *,
        no_store: bool = False,
    ) -> Response:
        """Common shape of a faultable endpoint: latency, fault, work, maybe a lost answer."""
        if not await self.held(request, endpoint, "received"):
            self.emu.count("abandoned_requests")
            return Response(b"", 504)
        if latency > 0:
            await self.sleep(latency)
        fault = self.emu.take_fault(endpoint)
        if fault is not None:
            replaced = self.fault_response(fault, endpoint)
            if replaced is not None:
                return replaced
        delay = self.emu.fault_delay if fault is None or fault.delay is None else fault.delay
        if fault is not None and fault.name == "timeout":
            await request.body()  # cache it: is_disconnected() below must not eat the body
            await self.sleep(delay)
            if await request.is_disconnected():
                # The client gave up before the provider got to it: nothing is processed.
                self.emu.count("abandoned_requests")
                return Response(b"", 504)
        try:
            reply: Reply = await work()
        except ClientDisconnect:  # gone before its body arrived (a killed process): no answer
            return Response(b"", 499)
        await self.held(request, endpoint, "answered")
        if endpoint == "token" and self.emu.answer_latency > 0:
            # The token's lifetime already runs while its answer travels back.
            await self.sleep(self.emu.answer_latency)
        if fault is not None and fault.name == "drop_after_processing":
            # The work is done (a refresh token may have rotated); the answer comes too late.
            await self.sleep(delay)
        if fault is not None and fault.name == "negative_expires" and reply.status == 200:
            assert reply.body is not None
            reply.body["expires_in"] = -5
        if self.emu.echo_secrets and reply.status >= 400 and isinstance(reply.body, dict):
            await self._echo(request, reply.body)
        return respond(reply, no_store=no_store)

    async def _echo(self, request: Request, body: dict[str, Any]) -> None:
        """`echo_secrets`: the refusal quotes the request (form, Authorization, API key)."""
        sent = (await request.body()).decode("utf-8", "replace")
        heard = [f"form: {sent}"] if sent else []
        for name in ("authorization", "x-api-key"):
            if name in request.headers:
                heard.append(f"{name}: {request.headers[name]}")
        quoted = "; ".join(heard)
        if "error_description" in body:  # OAuth: the description repeats the request
            body["error_description"] = f"{body['error_description']} (we got {quoted})"
        elif isinstance(body.get("error"), str):  # HeyGen: the error itself does
            body["error"] = f"{body['error']} (we got {quoted})"
