"""What the broker's routes share (`app.state.broker`): credentials, clients, sessions, the
upstream HTTP client, metrics, and the audit line every action writes.

What is shared between replicas: every credential's record and lease, in the configured store
(Redis or PostgreSQL for several replicas), so N replicas still refresh a credential once per
expiry. What is per replica: sessions (see `broker.sessions`), rate buckets, metrics counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx2

from ..config import Config
from ..errors import TokenwardError
from ..token import Token
from .accesslog import QueryStringFilter
from .auth import BrokerError, ClientRegistry
from .config import BrokerConfig, ClientEntry, Limits
from .errors import credential_error
from .metrics import BrokerMetrics
from .runtime import BrokerCredential
from .sessions import SessionRegistry, StopOutcome

__all__ = ["Broker", "audit_logger"]

audit_logger = logging.getLogger("tokenward.audit")


def _audit_emitted() -> bool:
    """Whether some handler could write an INFO line of `tokenward.audit` (the same walk as
    `Logger.callHandlers`). When nothing would write it, the line is not built at all."""
    if audit_logger.disabled or not audit_logger.isEnabledFor(logging.INFO):
        return False
    if audit_logger.filters:  # a filter sees every record: let it
        return True
    found = False
    logger: logging.Logger | None = audit_logger
    while logger is not None:
        for handler in logger.handlers:
            found = True
            if handler.level <= logging.INFO:
                return True
        logger = logger.parent if logger.propagate else None
    last = logging.lastResort  # None: let logging say that no handler was found
    return not found and (last is None or last.level <= logging.INFO)


class Broker:
    """Everything the routes share (kept on `app.state.broker`)."""

    def __init__(self, config: Config, settings: BrokerConfig) -> None:
        self.config = config
        self.settings = settings
        self.limits: Limits = settings.limits
        self.clients = ClientRegistry(settings.clients)
        self.credentials = {
            name: BrokerCredential(cc, config.store_for(cc))
            for name, cc in config.credentials.items()
        }
        self.metrics = BrokerMetrics(lambda: {n: (n, c.store) for n, c in self.credentials.items()})
        self.sessions = SessionRegistry(self.limits.session_idle_timeout, self._stop_failed)
        self.http: httpx2.AsyncClient | None = None
        #: The per-request timeout extension of proxied requests (built once).
        self.upstream_timeout = httpx2.Timeout(self.limits.upstream_timeout).as_dict()
        self._reaper: asyncio.Task[None] | None = None
        self.access_log = QueryStringFilter()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        # No redirects: a 30x to another host must reach the client, not be followed with a
        # token attached.
        self.http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(self.limits.upstream_timeout), follow_redirects=False
        )

        self.metrics.attach()
        self.access_log.attach()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for outcome in await self.sessions.close_all():  # a broker shutdown stops its sessions
            self._ended(outcome, "session.close")
        if self.http is not None:
            await self.http.aclose()
        # Every credential drains its refresh in flight before the stores close below.
        await asyncio.gather(*(credential.aclose() for credential in self.credentials.values()))
        self.metrics.detach()
        self.access_log.detach()
        self.config.close()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.reap_interval)
            try:
                for outcome in await self.sessions.reap():
                    self._ended(outcome, "session.reap")
            except Exception as exc:  # the reaper must survive one bad session
                audit_logger.warning("session.reap failed: %s", type(exc).__name__)

    def _ended(self, outcome: StopOutcome, action: str) -> None:
        """The audit line of a session ended by the reaper or at shutdown: 204 only when the
        provider confirmed the stop, 502 with the reason otherwise."""
        found = outcome.session
        status = 204 if outcome.result == "stopped" else 502
        error = None if status == 204 else f"stop_{outcome.result}"
        self.audit(
            found.client,
            found.credential,
            action,
            status,
            found.fingerprint,
            session=found.id,
            reason=found.ending,
            error=error,
        )

    def _stop_failed(self, outcome: StopOutcome) -> None:
        self.metrics.session_event(outcome.session.credential, f"stop_{outcome.result}").inc()

    # -- helpers --------------------------------------------------------------------------------
    def credential(self, client: ClientEntry, name: str) -> BrokerCredential:
        found = self.credentials.get(name)
        if not client.policy.allows_credential(name):
            raise BrokerError(
                403, "forbidden", f"client {client.name!r} may not use credential {name!r}"
            )
        if found is None:
            raise BrokerError(404, "not_found", f"no credential {name!r}")
        return found

    def failed(
        self, client: str, cred: BrokerCredential, action: str, exc: TokenwardError
    ) -> BrokerError:
        """The answer for a credential that could not produce a token (audited)."""
        error = credential_error(cred.name, exc, api_key=cred.api_key)
        self.audit(client, cred.name, action, error.status, error=error.error)
        return error

    def refused(self, status: int, error: str, path: str, source: str) -> None:
        """Audit a request the guard refused before any route saw it."""
        self.audit(None, None, "auth", status, path=path, error=error, source=source)

    def audit(
        self,
        client: str | None,
        credential: str | None,
        action: str,
        status: int,
        token: Token | str | None = None,
        **fields: Any,
    ) -> None:
        """One line per action on `tokenward.audit`; a token only by its fingerprint."""
        self.metrics.request(action, status).inc()
        if not _audit_emitted():  # no handler would write the line: do not build it
            return
        shown = token.fingerprint if isinstance(token, Token) else token
        extra: dict[str, Any] = {"client": client, "credential": credential, "action": action}
        extra.update(status=status, token_fingerprint=shown or "-", **fields)
        text = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        audit_logger.info("%s", text, extra={"audit": extra})
