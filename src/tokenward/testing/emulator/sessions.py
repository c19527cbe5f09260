"""HeyGen-style single-session tokens and the sessions they open (and the same provider behind
OpenAI Realtime's and LiveAvatar's shapes): quotas per account, idle and duration limits."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .accounts import AccountsModel
from .shapes import Reply, bearer_token, fingerprint, json_seconds, session_error
from .state import Session


class SessionsModel(AccountsModel):
    """Session tokens and streaming sessions (each public method takes the lock)."""

    def create_session_token(self, api_key: str | None) -> Reply:
        """POST /v1/streaming.create_token (HeyGen): API key in, single-session token out."""
        with self._lock:
            if not api_key or not any(
                hmac.compare_digest(api_key.encode(), known.encode()) for known in self._api_keys
            ):
                return session_error(401, "invalid api key")
            data: dict[str, Any] = {"token": self._new_session_token(api_key)}
            if self.session_token_expires_in:
                data["expires_in"] = json_seconds(self.session_token_lifetime)
            return Reply(200, {"error": None, "data": data})

    def create_client_secret(self, authorization: str | None) -> Reply:
        """POST /v1/realtime/client_secrets (OpenAI Realtime): the API key as a Bearer token
        in, an ephemeral key out, its expiry as a UNIX time."""
        with self._lock:
            key = bearer_token(authorization)
            if not key or not any(
                hmac.compare_digest(key.encode(), known.encode()) for known in self._api_keys
            ):
                return Reply(401, {"error": {"message": "Incorrect API key provided"}})
            token = self._new_session_token(key, "ek_")
            expires = time.time() + self.session_token_lifetime
            session = {"type": "realtime", "object": "realtime.session"}
            body = {"value": token, "expires_at": int(expires), "session": session}
            return Reply(200, body)

    def create_liveavatar_token(self, api_key: str | None) -> Reply:
        """POST /v1/sessions/token (LiveAvatar-style): the API key in X-API-KEY, a token for
        one session out (its session opens with POST /v1/sessions/start)."""
        answer = self.create_session_token(api_key)
        if answer.status != 200 or answer.body is None:
            return answer
        token = answer.body["data"]["token"]
        return Reply(200, {"code": 1000, "data": {"session_token": token}})

    def open_sessions(self) -> list[str]:
        """Ids of HeyGen-style sessions still open (idle ones are closed first)."""
        with self._lock:
            self._reap_sessions()
            return list(self._sessions)

    def _reap_sessions(self) -> None:
        """Close sessions idle for session_idle_timeout or older than session_duration_limit."""
        now = self.now()
        for session_id, session in list(self._sessions.items()):
            idle = now - session.last_seen > self.session_idle_timeout
            too_old = now - session.created_at > self.session_duration_limit
            if idle or too_old:
                self._close_session(session_id)
                self._counters["sessions_timed_out"] += 1

    def _close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._session_tokens.pop(session.token, None)

    def streaming_new(self, authorization: str | None, base_url: str) -> Reply:
        """POST /v1/streaming.new: binds a fresh session token to a new session, once."""
        with self._lock:
            self._reap_sessions()
            token = bearer_token(authorization)
            record = self._session_tokens.get(token) if token else None
            if record is None:
                return session_error(401, "unauthorized")
            if record.session_id is not None:  # one token, one session
                self._counters["session_tokens_reused"] += 1
                return session_error(401, "unauthorized")
            now = self.now()
            if now >= record.expires_at:
                self._counters["session_401_expired"] += 1
                return session_error(401, "unauthorized")
            held = sum(1 for s in self._sessions.values() if s.account == record.account)
            if self.session_concurrency and held >= self.session_concurrency:
                self._counters["sessions_refused_quota"] += 1
                return session_error(400, "concurrent session limit reached")
            session_id = secrets.token_hex(16)
            record.session_id = session_id
            self._sessions[session_id] = Session(session_id, token, now, now, record.account)
            self._counters["sessions_started"] += 1
            ws_base = "ws" + base_url.removeprefix("http")
            data = {
                "session_id": session_id,
                "access_token": secrets.token_urlsafe(24),
                "url": f"{ws_base}/livekit",
                "session_duration_limit": json_seconds(self.session_duration_limit),
                "is_paid": False,
            }
            return Reply(200, {"code": 100, "message": "success", "data": data})

    def _session_caller(
        self, action: str, authorization: str | None, api_key: str | None, session_id: str
    ) -> Session | Reply:
        """The session a call may act on: by its own (unexpired) token, or by its account's
        API key where the provider accepts the key for this call."""
        session = self._sessions.get(session_id)
        if api_key and action in self.session_api_key_calls:
            known = any(hmac.compare_digest(api_key.encode(), k.encode()) for k in self._api_keys)
            if not known or session is None or session.account != fingerprint(api_key):
                return session_error(401, "unauthorized")
            self._counters["session_api_key_calls"] += 1
            return session
        token = bearer_token(authorization)
        record = self._session_tokens.get(token) if token else None
        if record is None or record.session_id is None:
            return session_error(401, "unauthorized")
        if self.now() >= record.expires_at:
            self._counters["session_401_expired"] += 1
            return session_error(401, "unauthorized")
        if session is None or session.token != token:
            return session_error(401, "unauthorized")
        return session

    def streaming_call(
        self,
        action: str,
        authorization: str | None,
        payload: Mapping[str, Any],
        api_key: str | None = None,
    ) -> Reply:
        """start / task / keep_alive / interrupt / stop on a session owned by the token (or,
        for the calls in `session_api_key_calls`, by the API key's account)."""
        with self._lock:
            self._reap_sessions()
            if action in ("start", "keep_alive", "interrupt") and (
                action not in self.session_optional_calls
            ):
                return session_error(404, f"streaming.{action} is not available")
            session_id = payload.get("session_id")
            if not isinstance(session_id, str) or not session_id:
                if not bearer_token(authorization) and not api_key:
                    return session_error(401, "unauthorized")
                return session_error(400, "session_id is required")
            found = self._session_caller(action, authorization, api_key, session_id)
            if isinstance(found, Reply):
                return found
            session = found
            session.last_seen = self.now()
            data: dict[str, Any] | None = None
            if action == "start":
                session.streaming = True
                self._counters["streams_started"] += 1
            elif action == "task":
                text = payload.get("text")
                task_type = payload.get("task_type", "repeat")
                if not isinstance(text, str) or not text:
                    return session_error(400, "text is required")
                if task_type not in ("repeat", "chat"):
                    return session_error(400, "task_type must be repeat or chat")
                self._counters["tasks"] += 1
                duration = max(500, 80 * len(text.split()))
                data = {"task_id": secrets.token_hex(8), "duration_ms": duration}
            elif action == "keep_alive":
                self._counters["keepalives"] += 1
            elif action == "interrupt":
                self._counters["interrupts"] += 1
            elif action == "stop":
                self._close_session(session.session_id)
                self._counters["sessions_stopped"] += 1
            else:  # pragma: no cover - routes only pass known actions
                return session_error(404, "unknown action")
            return Reply(200, {"code": 100, "message": "success", "data": data})
