"""Exceptions raised by tokenward (and the warnings it issues).

All of them are importable from `tokenward`; they live here, apart from the code that raises
them, so that catching one does not import that code.

Every message names the credential (and the file, field or provider answer involved) and says
how to fix the problem. No message ever contains a secret: tokens are named by fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthorizationDenied",
    "ConfigError",
    "CredentialNotSeeded",
    "InlineSecretWarning",
    "LeaseTimeout",
    "MalformedTokenResponse",
    "ManagerClosed",
    "ReadableSecretsWarning",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RequestRejected",
    "SessionClosed",
    "SessionExpired",
    "SessionScoped",
    "StopFailed",
    "StoreCorrupted",
    "StoreError",
    "TokenReused",
    "TokenwardError",
    "TransientError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` when one of `choices` is close to `word` (a typo), else "".
    Shared by every message about an unknown name (config keys, presets, credentials)."""
    import difflib  # only on the error path: `import tokenward` stays light

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class TokenwardError(Exception):
    """Base class of every tokenward error."""


class ReauthorizationRequired(TokenwardError):
    """The provider refused the grant for good (`invalid_grant`, `invalid_client`, ...).

    A person must log in again (or the credential must be re-seeded). `answer_lost` is True when
    the refusal followed a refresh whose answer never arrived: the provider probably rotated the
    refresh token and the new one was lost in transit, the user did not revoke anything.
    """

    def __init__(
        self,
        credential: str,
        error: str,
        description: str | None = None,
        *,
        answer_lost: bool = False,
        cause: str | None = None,
        advice: str | None = None,
    ) -> None:
        self.credential = credential
        self.error = error
        self.description = description
        self.answer_lost = answer_lost
        self.advice = advice
        advice = advice or (
            f"Log in again (`tokenward login {credential}`) or seed a new refresh token."
        )
        if cause is not None:  # not the provider's answer (a stored state, a local revoke)
            super().__init__(
                f"credential {credential!r}: re-authorization required: {cause}. {advice}"
            )
            return
        if answer_lost:
            cause = (
                "the answer to a refresh was lost in transit (the provider probably rotated the "
                "refresh token), and the retry with the previous refresh token was refused"
            )
        else:
            cause = "the provider refused the grant"
        detail = f" ({description})" if description else ""
        super().__init__(
            f"credential {credential!r}: re-authorization required: {cause}: {error}{detail}. "
            f"{advice}"
        )

    @classmethod
    def stored(cls, credential: str, last_error: str | None) -> ReauthorizationRequired:
        """The store already marks the credential as needing a login: say why, in the words
        recorded when it happened (the provider's refusal, or a revocation), without claiming
        the provider was asked now."""
        prefix = f"credential {credential!r}: re-authorization required: "
        cause = (last_error or "the stored record is marked as needing a login").removeprefix(
            prefix
        )
        cause = cause.split(". Log in again (`tokenward login", 1)[0].rstrip(".")
        return cls(credential, "needs_reauth", last_error, cause=cause)


class RefreshFailed(TokenwardError):
    """A refresh could not complete within its deadline because the provider was unreachable
    or kept answering with transient errors (timeouts, 429, 5xx)."""

    def __init__(self, credential: str, detail: str, attempts: int) -> None:
        self.credential = credential
        self.detail = detail
        self.attempts = attempts
        super().__init__(
            f"credential {credential!r}: refresh failed after {attempts} attempt(s): {detail}. "
            "The provider is unreachable or overloaded; tokenward will try again on the next call."
        )


class TransientError(TokenwardError):
    """One attempt at the token endpoint failed in a way worth retrying.

    `sent` is True when the request may have reached the provider (a read timeout or a reset
    after sending): for a rotating refresh token, the provider may then have rotated it.
    """

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        sent: bool = False,
        status: int | None = None,
    ) -> None:
        self.detail = detail
        self.retry_after = retry_after
        self.sent = sent
        self.status = status
        super().__init__(detail)


class MalformedTokenResponse(TokenwardError):
    """The token endpoint answered with something that is not a usable token response."""

    def __init__(self, credential: str, field: str, detail: str) -> None:
        self.credential = credential
        self.field = field
        self.detail = detail
        super().__init__(
            f"credential {credential!r}: malformed token response: {field}: {detail}. "
            "Check the token URL and the credential's response settings (token/expiry paths)."
        )


class RequestRejected(TokenwardError):
    """The token endpoint rejected the request itself (`invalid_request`, `invalid_scope`,
    `unsupported_grant_type`, an unexpected 4xx): a configuration problem, not worth retrying."""

    def __init__(
        self, credential: str, status: int, error: str, description: str | None = None
    ) -> None:
        self.credential = credential
        self.status = status
        self.error = error
        self.description = description
        detail = f" ({description})" if description else ""
        super().__init__(
            f"credential {credential!r}: the token endpoint rejected the request with HTTP "
            f"{status} {error}{detail}. Check the credential's token URL, scope and parameters."
        )


class CredentialNotSeeded(TokenwardError):
    """A refresh-token credential has no record in the store yet: nobody logged in."""

    def __init__(self, credential: str) -> None:
        self.credential = credential
        super().__init__(
            f"credential {credential!r} has no refresh token in the store. Log in first "
            f"(`tokenward login {credential}`) or seed it with `TokenManager.seed()`."
        )


class LeaseTimeout(TokenwardError):
    """Another process held the refresh lease for longer than we were willing to wait."""

    def __init__(self, credential: str, waited: float) -> None:
        self.credential = credential
        super().__init__(
            f"credential {credential!r}: waited {waited:.1f}s for another process to finish "
            "refreshing; it neither finished nor released its lease. It will expire on its own; "
            "retry, or raise the lease wait."
        )


class ManagerClosed(TokenwardError):
    """A refresh was asked of a `TokenManager` after `close()`: its HTTP client is released,
    and a token request sent now could rotate a refresh token nobody is left to store."""

    def __init__(self, credential: str) -> None:
        self.credential = credential
        super().__init__(
            f"credential {credential!r}: the TokenManager for {credential!r} is closed, so no "
            "refresh is started. Create a new manager (it continues from the store) instead of "
            "using one after close() or its `with` block."
        )


class StoreError(TokenwardError):
    """A store could not be read or written."""


class StoreCorrupted(StoreError):
    """A store's file or database is not readable as a store. Nothing is reset silently."""

    def __init__(self, location: str, detail: str) -> None:
        self.location = location
        self.detail = detail
        super().__init__(
            f"token store {location} is corrupt: {detail}. It was left untouched; restore it "
            "from a backup or move it aside and log in again."
        )


class SessionScoped(TokenwardError):
    """A session-scoped credential's token was asked of a `TokenManager` (which caches and
    stores tokens): each such token serves exactly one session, so it is never cached, stored
    or handed out twice."""

    def __init__(self, credential: str) -> None:
        self.credential = credential
        super().__init__(
            f"credential {credential!r} is session-scoped: each token serves one session and is "
            "never cached or stored. Open a session instead: tokenward.credential"
            f"({credential!r}).sessions() (tokenward.sessions), or POST /v1/sessions on the broker"
        )


class ConfigError(TokenwardError):
    """The configuration is missing, unreadable or invalid. The message says where and how to
    fix it, and never contains a secret."""


class InlineSecretWarning(UserWarning):
    """A secret is written in the configuration file itself instead of being referenced."""


class ReadableSecretsWarning(UserWarning):
    """A `.env` store (tokens, often the client secret too) is readable by group or others."""


class AuthorizationDenied(TokenwardError):
    """The user (or the provider) refused or abandoned an interactive authorization."""


# -- sessions (tokenward.sessions) ----------------------------------------------------------------
class SessionClosed(TokenwardError):
    """The session has ended: its token is forgotten and must not be used again."""


class TokenReused(TokenwardError):
    """The source returned a token already handed to an earlier session (never passed on)."""


class SessionExpired(TokenwardError):
    """The provider no longer accepts the session's token, and the call has no API-key
    alternative: the session is over. Start a new session (a fresh token); never retry with
    this one."""

    def __init__(self, key: str, call: str) -> None:
        super().__init__(
            f"{key!r}: the session's token is no longer accepted ({call} answered as expired); "
            "start a new session for a fresh token"
        )
        self.call = call


class StopFailed(TokenwardError):
    """The upstream session could not be stopped. `pending`: a later attempt may succeed (the
    provider failed transiently or did not answer); otherwise nothing can stop it any more (its
    token expired and the provider accepts no API key for the stop) and it ends when the
    provider times it out."""

    def __init__(self, key: str, reason: str, *, pending: bool) -> None:
        super().__init__(f"{key!r}: the upstream session was not stopped: {reason}")
        self.reason = reason
        self.pending = pending
