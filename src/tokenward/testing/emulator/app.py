"""The emulator's HTTP app (Starlette): routes, thin handlers around the model, and the
loopback-only control endpoints (`/_emulator/...`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .model import Emulator
from .shapes import DEFAULT_SCOPE, DEVICE_GRANT_TYPE, LOOPBACK, Reply, invalid_request
from .wire import PathCounter, html_attr, read_form, read_json, request_base_url, respond
from .wire_faults import FaultRunner


class _Handlers(FaultRunner):
    """Starlette endpoints; thin wrappers that add faults and delays around Emulator logic."""

    async def token(self, request: Request) -> Response:
        self.emu.count("token_requests")

        async def work() -> Reply:
            params, failure = await read_form(request)
            if failure is not None:
                return failure
            headers = request.headers
            return self.emu.token_endpoint(
                params, headers.get("authorization"), headers.get("user-agent")
            )

        try:
            return await self.run_with_faults(
                request, "token", self.emu.latency, work, no_store=True
            )
        finally:
            # Beside `token_requests`: a test that killed a client waits until the two agree,
            # so a request the dead client left behind cannot rotate a token afterwards.
            self.emu.count("token_requests_finished")

    async def authorize(self, request: Request) -> Response:
        reply = self.emu.authorize(dict(request.query_params))
        return respond(reply)

    async def device_code(self, request: Request) -> Response:
        params, failure = await read_form(request)
        if failure is not None:
            return respond(failure)
        base = request_base_url(request)
        reply = self.emu.device_authorization(params, request.headers.get("authorization"), base)
        return respond(reply, no_store=True)

    async def device_page(self, request: Request) -> Response:
        user_code = request.query_params.get("user_code", "")
        page = (
            "<html><body><form method='post' action='/device/approve'>"
            f"<input name='user_code' value='{html_attr(user_code)}'>"
            "<button>Approve</button></form></body></html>"
        )
        return HTMLResponse(page)

    async def device_approve(self, request: Request) -> Response:
        params, failure = await read_form(request)
        if failure is not None:
            return respond(failure)
        user_code = params.get("user_code")
        if not user_code:
            return respond(invalid_request("user_code"))
        deny = params.get("action") == "deny"
        if not self.emu.approve_device(user_code, deny=deny):
            return JSONResponse({"error": "invalid_user_code"}, 400)
        return JSONResponse({"approved": not deny})

    async def revoke(self, request: Request) -> Response:
        params, failure = await read_form(request)
        if failure is not None:
            return respond(failure)
        return respond(self.emu.revocation_endpoint(params, request.headers.get("authorization")))

    async def metadata(self, request: Request) -> Response:
        base = request_base_url(request)
        body = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "device_authorization_endpoint": f"{base}/oauth/device/code",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                DEVICE_GRANT_TYPE,
            ],
            "response_types_supported": ["code"],
            "scopes_supported": ["offline_access", "read", "write"],
        }
        return JSONResponse(body)

    async def api(self, request: Request) -> Response:
        self.emu.count("api_calls")

        async def work() -> Reply:
            path = request.url.path
            denied, token_fp = self.emu.api_request(path, request.headers.get("authorization"))
            if denied is not None:
                return denied
            raw = await request.body()
            text = raw.decode("utf-8", errors="replace")
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
            body = {
                "ok": True,
                "method": request.method,
                "path": path,
                "query": dict(request.query_params),
                "body": text,
                "json": parsed,
                "token_fingerprint": token_fp,
            }
            return Reply(200, body)

        response = await self.run_with_faults(request, "api", self.emu.api_latency, work)
        outcome = {200: "api_ok", 401: "api_401", 403: "api_403"}.get(response.status_code)
        if outcome is not None:
            self.emu.count(outcome)
        return response

    async def create_token(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> Reply:
            return self.emu.create_session_token(request.headers.get("x-api-key"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def client_secret(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> Reply:
            return self.emu.create_client_secret(request.headers.get("authorization"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def liveavatar_token(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> Reply:
            return self.emu.create_liveavatar_token(request.headers.get("x-api-key"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def streaming_new(self, request: Request) -> Response:
        base = request_base_url(request)
        return respond(self.emu.streaming_new(request.headers.get("authorization"), base))

    def streaming(self, action: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            payload, failure = await read_json(request)
            if failure is not None:
                return respond(failure)
            auth = request.headers.get("authorization")
            key = request.headers.get("x-api-key")
            if action != "stop":
                return respond(self.emu.streaming_call(action, auth, payload, key))

            async def work() -> Reply:
                return self.emu.streaming_call(action, auth, payload, key)

            return await self.run_with_faults(request, "stop", 0.0, work)

        return endpoint

    async def control(self, request: Request) -> Response:
        client = request.client
        if client is None or client.host not in LOOPBACK:
            return JSONResponse({"error": "control endpoints are loopback-only"}, 403)
        action = request.path_params["action"]
        emu = self.emu
        if request.method == "GET":
            if action == "counters":
                return JSONResponse(emu.counters)
            if action == "refresh-log":
                return JSONResponse(emu.refresh_log)
            if action == "grant-log":
                return JSONResponse(emu.grant_log)
            if action == "config":
                return JSONResponse(emu.settings())
            if action == "sessions":
                return JSONResponse({"open": emu.open_sessions()})
            return JSONResponse({"error": "not found"}, 404)
        payload, failure = await read_json(request)
        if failure is not None:
            return respond(failure)
        try:
            return JSONResponse(self.control_post(action, payload))
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, 400)

    def control_post(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        emu = self.emu
        if action == "reset-counters":
            emu.reset_counters()
            return {"ok": True}
        if action == "config":
            return emu.configure(**payload)
        if action == "clients":
            emu.add_client(
                str(payload["client_id"]),
                payload.get("client_secret"),
                redirect_uris=payload.get("redirect_uris"),
            )
            return {"ok": True}
        if action == "api-keys":
            emu.add_api_key(str(payload["key"]))
            return {"ok": True}
        if action == "refresh-tokens":
            scope = str(payload.get("scope") or DEFAULT_SCOPE)
            return {"refresh_token": emu.issue_refresh_token(str(payload["client_id"]), scope)}
        if action == "access-tokens":
            lifetime = payload.get("lifetime")
            token = emu.issue_access_token(
                str(payload["client_id"]), None if lifetime is None else float(lifetime)
            )
            return {"access_token": token}
        if action == "inject":
            retry_after = payload.get("retry_after")
            delay = payload.get("delay")
            emu.inject(
                str(payload["fault"]),
                times=int(payload.get("times", 1)),
                endpoint=str(payload.get("endpoint", "token")),
                retry_after=None if retry_after is None else float(retry_after),
                delay=None if delay is None else float(delay),
            )
            return {"ok": True}
        if action == "clear-faults":
            emu.clear_faults()
            return {"ok": True}
        if action == "advance":
            emu.advance(float(payload["seconds"]))
            return {"ok": True}
        if action == "expire-access-tokens":
            emu.expire_access_tokens()
            return {"ok": True}
        if action == "revoke-access-tokens":
            return {"revoked": emu.revoke_access_tokens()}
        raise ValueError(f"unknown control action: {action}")


def create_app(emulator: Emulator, closing: threading.Event | None = None) -> Starlette:
    """Build the ASGI app for ``emulator``; ``closing`` set means "stop sleeping, answer now"."""
    h = _Handlers(emulator, closing if closing is not None else threading.Event())
    api_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/oauth/token", h.token, methods=["POST"]),
        Route("/authorize", h.authorize, methods=["GET"]),
        Route("/oauth/device/code", h.device_code, methods=["POST"]),
        Route("/device", h.device_page, methods=["GET"]),
        Route("/device/approve", h.device_approve, methods=["POST"]),
        Route("/oauth/revoke", h.revoke, methods=["POST"]),
        Route("/.well-known/oauth-authorization-server", h.metadata, methods=["GET"]),
        Route("/.well-known/openid-configuration", h.metadata, methods=["GET"]),
        Route("/api/{path:path}", h.api, methods=api_methods),
        Route("/v1/streaming.create_token", h.create_token, methods=["POST"]),
        Route("/v1/streaming.new", h.streaming_new, methods=["POST"]),
        # The same provider behind OpenAI Realtime's and LiveAvatar's shapes.
        Route("/v1/realtime/client_secrets", h.client_secret, methods=["POST"]),
        Route("/v1/sessions/token", h.liveavatar_token, methods=["POST"]),
        Route("/v1/sessions/start", h.streaming_new, methods=["POST"]),
        Route("/v1/sessions/keep-alive", h.streaming("keep_alive"), methods=["POST"]),
        Route("/v1/sessions/stop", h.streaming("stop"), methods=["POST"]),
        Route("/_emulator/{action}", h.control, methods=["GET", "POST"]),
    ]
    for action in ("start", "task", "keep_alive", "interrupt", "stop"):
        routes.append(Route(f"/v1/streaming.{action}", h.streaming(action), methods=["POST"]))
    app = Starlette(routes=routes, middleware=[Middleware(PathCounter, emulator=emulator)])
    app.state.emulator = emulator
    app.state.closing = h.closing
    return app
