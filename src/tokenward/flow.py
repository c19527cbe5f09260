"""The refresh protocol for one credential, written once as a sans-I/O generator.

`refresh_flow` decides everything: when to adopt a token another process stored, when to take
the store lease, how to retry, what a refusal means, and what to persist. It does no I/O: it
yields small operations (`Load`, `Save`, `Acquire`, `Http`, `Sleep`, ...) and receives their
results. It reads no clock (it asks with `Now`) and logs nothing (it yields `Notify` events).
Two thin drivers in `tokenward.driver`, `run` (threads) and `run_async` (asyncio), carry the
operations out, so sync and async callers share one implementation, in the spirit of httpx's
`Auth.auth_flow`; tests/test_flow.py drives the generators by hand.

Longer than 500 lines on purpose: the operations and the one protocol that yields them belong
together, so every decision can be read (and tested) in one place.

See docs/architecture.md, "Refresh protocol", and its invariants 1, 2, 5, 6 and 9.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import (
    CredentialNotSeeded,
    LeaseTimeout,
    MalformedTokenResponse,
    ReauthorizationRequired,
    RefreshFailed,
    StoreError,
    TransientError,
)
from .retry import RetryPolicy
from .sources.base import HttpSource, PriorGrant, Source
from .sources.function import Called, FunctionSource
from .stores.base import Begun, Claim, InFlightMark, Record, Store
from .token import Grant, Token, fingerprint
from .transport import HttpRequest

__all__ = ["Flow", "FlowContext", "Op", "mint_flow", "refresh_flow"]


# -- operations ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Load:
    key: str


@dataclass(frozen=True, slots=True)
class Save:
    record: Record
    expected_version: int


@dataclass(frozen=True, slots=True)
class Acquire:
    key: str
    owner: str
    ttl: float


@dataclass(frozen=True, slots=True)
class Renew:
    key: str
    owner: str
    ttl: float


@dataclass(frozen=True, slots=True)
class Release:
    key: str
    owner: str


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Http:
    request: HttpRequest
    #: A lease the driver keeps renewed while the request is in flight: a provider slower than
    #: the lease TTL must not let another process take the lease and spend the same refresh token.
    lease: Renew | None = None


@dataclass(frozen=True, slots=True)
class Invoke:
    source: FunctionSource
    current: Token | None


@dataclass(frozen=True, slots=True)
class Inspect:
    """Who holds the lease on `key` (or, with `in_flight`, has its refresh token in flight), and
    whether that process still runs. The driver answers with a `Holder`, or None."""

    key: str
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Holder:
    claim: Claim
    #: True alive, False provably dead, None unknown (`Store.holder_alive`).
    alive: bool | None


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Take the lease of a provably dead holder (`Store.take_over_lease`)."""

    key: str
    dead_owner: str
    owner: str
    ttl: float


@dataclass(frozen=True, slots=True)
class MarkInFlight:
    key: str
    owner: str
    fingerprint: str
    ttl: float


@dataclass(frozen=True, slots=True)
class ClearInFlight:
    key: str
    owner: str


@dataclass(frozen=True, slots=True)
class Begin:
    """Take the lease, read the record and its in-flight record, and (`mark`) mark the refresh
    token in flight: one store round trip (`Store.begin_refresh`). The driver answers with a
    `Begun`."""

    key: str
    owner: str
    ttl: float
    mark: InFlightMark | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """Compare-and-set `record`; when it wins, also clear our in-flight record and release our
    lease (`Store.finish_refresh`). The driver answers True or False."""

    record: Record
    expected_version: int
    owner: str


@dataclass(frozen=True, slots=True)
class Notify:
    """An event for the driver to emit (`tokenward.events.emit`): the protocol logs nothing
    itself, so a test sees every event as an operation, in order."""

    event: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Now:
    """Ask the driver for the clock, in seconds: monotonic (durations: backoff deadlines, lease
    waits), or the wall clock with `wall` (the `updated_at` written on a record). The protocol
    reads no clock itself, so a test can script time."""

    wall: bool = False


NOW = Now()
WALL = Now(wall=True)


def _event(event: str, key: str, **fields: Any) -> Notify:
    return Notify(event, key, fields)


Op = (
    Load
    | Save
    | Acquire
    | Renew
    | Release
    | Sleep
    | Http
    | Invoke
    | Inspect
    | TakeOver
    | MarkInFlight
    | ClearInFlight
    | Begin
    | Finish
    | Notify
    | Now
)
Flow = Generator[Op, Any, Token]


@dataclass(frozen=True)
class FlowContext:
    """Everything the protocol needs to know about one credential."""

    key: str
    source: Source
    store: Store
    owner: str
    #: True when a token can be served without refreshing (beyond its refresh window).
    fresh: Callable[[Token], bool]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    lease_ttl: float = 30.0
    #: How long to wait for another process's refresh before giving up.
    lease_wait: float = 60.0
    #: The longest one token request may take: how long an in-flight record stands.
    request_deadline: float = 60.0


# -- the protocol -------------------------------------------------------------------------------
def refresh_flow(
    ctx: FlowContext, seen: Token | None, force: bool = False, known: Record | None = None
) -> Flow:
    """Obtain a token newer than `seen` (the caller's current token, or None).

    `force` (after the provider rejected `seen`): even a not-yet-expired record of the same
    version is not good enough. `known`: the record as the caller just read it (a refresher's
    claim hands it out), so the protocol does not load it again before taking the lease.

    Store round trips on the common path: `Load` (unless `known`), `Begin` (lease, record,
    in-flight record and mark), the token request, `Finish` (compare-and-set, clear, release).
    """
    yield _event("token.requested", ctx.key, version=seen.version if seen else None, force=force)
    rec = known if known is not None else (yield Load(ctx.key))
    if (token := (yield from _adoptable(ctx, rec, seen))) is not None:
        return token
    begun: Begun = yield Begin(ctx.key, ctx.owner, ctx.lease_ttl, _mark_for(ctx, rec))
    if not begun.acquired:
        if (token := (yield from _adoptable(ctx, begun.record, seen))) is not None:
            return token
        if (token := (yield from _take_lease(ctx, seen))) is not None:
            return token
        # The lease is ours now: read the record under it (and mark) in the same round trip.
        begun = yield Begin(ctx.key, ctx.owner, ctx.lease_ttl, _mark_for(ctx, begun.record))
    leased_at: float = yield NOW
    lease = _Held(in_flight=begun.marked)
    try:
        rec = begun.record
        if (token := (yield from _adoptable(ctx, rec, seen))) is not None:
            return token
        if ctx.source.needs_record and (rec is None or not rec.refresh_token):
            raise CredentialNotSeeded(ctx.key)
        waited = rec if begun.marked else (yield from _await_in_flight(ctx, rec, seen))
        if isinstance(waited, Token):
            return waited
        return (yield from _refresh(ctx, waited, leased_at, lease, begun.marked))
    finally:
        if lease.held:
            if lease.in_flight and _guards_in_flight(ctx):
                with contextlib.suppress(StoreError):  # else it lapses at its deadline
                    yield ClearInFlight(ctx.key, ctx.owner)
            yield Release(ctx.key, ctx.owner)


@dataclass(slots=True)
class _Held:
    """What the leader still holds in the store: the lease, and maybe an in-flight record.
    `Finish` gives both back when its compare-and-set wins."""

    held: bool = True
    in_flight: bool = False


def _mark_for(ctx: FlowContext, rec: Record | None) -> InFlightMark | None:
    """The in-flight mark `Begin` writes with the lease: the record's refresh token, if it is
    single-use and the record still has that version when the lease is ours."""
    if not _guards_in_flight(ctx) or rec is None or not rec.refresh_token:
        return None
    return InFlightMark(rec.version, fingerprint(rec.refresh_token), ctx.request_deadline)


def _adoptable(
    ctx: FlowContext, rec: Record | None, seen: Token | None
) -> Generator[Op, Any, Token | None]:
    """The stored token, if it is newer than `seen` and fresh; raises if re-auth is pending."""
    _check_readable(ctx, rec)
    token = rec.token() if rec else None
    if (
        token is not None
        and (
            seen is None
            or (token.version > seen.version and token.access_token != seen.access_token)
        )
        and ctx.fresh(token)
    ):
        if seen is not None:
            yield _adopted(ctx, token)
        return token
    if rec is not None and rec.state == "needs_reauth" and ctx.source.needs_record:
        # Invariant 5/6: never present a refused refresh token again; wait for a re-seed.
        raise ReauthorizationRequired.stored(ctx.key, rec.last_error)
    return None


def _adopted(ctx: FlowContext, token: Token) -> Notify:
    return _event("token.adopted", ctx.key, fingerprint=token.fingerprint, version=token.version)


def _check_readable(ctx: FlowContext, rec: Record | None) -> None:
    """Refuse a record whose secrets the store could not open (`Record.ensure_readable`)."""
    if rec is not None:
        rec.ensure_readable(ctx.store.location)


def _take_lease(ctx: FlowContext, seen: Token | None) -> Generator[Op, Any, Token | None]:
    """Acquire the lease (returns None), or adopt what its holder stored meanwhile.

    A holder that is provably dead (`Store.holder_alive`) loses its lease at once, instead of
    stalling everyone for the rest of its TTL. One whose liveness cannot be known is waited out,
    as before, and said so: `lease.holder_silent` when the wait starts, `lease.silent_wait_ended`
    with how long it lasted."""
    started: float = yield NOW
    pause = 0.01
    silent_since: float | None = None
    waited = 0.0
    while not (yield Acquire(ctx.key, ctx.owner, ctx.lease_ttl)):
        rec = yield Load(ctx.key)
        if (token := (yield from _adoptable(ctx, rec, seen))) is not None:
            yield from _silence_ended(ctx, silent_since, waited, "adopted")
            return token
        holder: Holder | None = yield Inspect(ctx.key)
        waited = (yield NOW) - started
        if holder is not None and holder.alive is False:
            claim = holder.claim
            if (yield TakeOver(ctx.key, claim.owner, ctx.owner, ctx.lease_ttl)):
                yield Notify("lease.taken_over", ctx.key, {"dead_holder": claim.owner})
                break
            continue  # the lease moved meanwhile: look again at once
        if holder is not None and holder.alive is None and silent_since is None:
            silent_since = waited
            yield _silent(ctx, holder.claim, "lease")
        if waited > ctx.lease_wait:
            yield from _silence_ended(ctx, silent_since, waited, "timeout")
            raise LeaseTimeout(ctx.key, waited)
        yield Sleep(pause)
        pause = min(pause * 2, 0.2)
    yield from _silence_ended(ctx, silent_since, waited, "acquired")
    return None


def _silent(ctx: FlowContext, claim: Claim, what: str) -> Notify:
    """`lease.holder_silent`: waiting on a holder whose liveness this process cannot know."""
    fields = {"waiting_on": what, "holder": claim.owner, "at_most": round(claim.expires_in, 3)}
    return Notify("lease.holder_silent", ctx.key, fields)


def _silence_ended(
    ctx: FlowContext, since: float | None, now: float, outcome: str
) -> Generator[Op, Any, None]:
    if since is not None:
        fields = {"waited": round(max(now - since, 0.0), 3), "outcome": outcome}
        yield Notify("lease.silent_wait_ended", ctx.key, fields)


def _guards_in_flight(ctx: FlowContext) -> bool:
    """Sources whose refresh token is single-use: a second process presenting the same one
    would be refused (and, with reuse detection, revoke the whole family)."""
    return ctx.source.rotating and ctx.source.needs_record


def _await_in_flight(
    ctx: FlowContext, rec: Record | None, seen: Token | None
) -> Generator[Op, Any, Token | Record | None]:
    """Under the lease, before spending `rec`'s refresh token: if another process has that very
    token in flight (it was stalled past its lease, or died), wait until its answer is stored
    (adopt it), its holder is provably dead, or its request's deadline passes. Returns the
    record to refresh from, or the token adopted meanwhile."""
    if not _guards_in_flight(ctx) or rec is None or not rec.refresh_token:
        return rec
    spent = fingerprint(rec.refresh_token)
    pause = 0.01
    slept = 0.0  # the sum of our pauses: how long we waited, give or take store round trips
    announced = silent = False
    while True:
        holder: Holder | None = yield Inspect(ctx.key, in_flight=True)
        if (
            holder is None
            or holder.alive is False
            or holder.claim.owner == ctx.owner
            or holder.claim.fingerprint != spent
        ):
            # Read the record again: it was read before this Inspect, and a stalled holder
            # stores its answer and drops its in-flight record in one step (`Finish`), so
            # "nothing in flight" can mean "its new refresh token is stored now".
            now: Record | None = yield Load(ctx.key)
            if (token := (yield from _adoptable(ctx, now, seen))) is not None:
                yield from _silence_ended(ctx, 0.0 if silent else None, slept, "adopted")
                return token
            yield from _silence_ended(ctx, 0.0 if silent else None, slept, "in_flight_over")
            return now
        if not announced:
            announced, silent = True, holder.alive is None
            yield (
                _silent(ctx, holder.claim, "in_flight")
                if silent
                else Notify(
                    "lease.waiting_in_flight",
                    ctx.key,
                    {"holder": holder.claim.owner, "at_most": round(holder.claim.expires_in, 3)},
                )
            )
        yield Sleep(pause)
        slept += pause
        pause = min(pause * 2, 0.2)
        if not (yield Renew(ctx.key, ctx.owner, ctx.lease_ttl)) and not (
            yield Acquire(ctx.key, ctx.owner, ctx.lease_ttl)
        ):
            raise LeaseTimeout(ctx.key, slept)
        latest: Record | None = yield Load(ctx.key)
        if (token := (yield from _adoptable(ctx, latest, seen))) is not None:
            yield from _silence_ended(ctx, 0.0 if silent else None, slept, "adopted")
            return token
        if latest is not None and latest.refresh_token != rec.refresh_token:
            return latest  # re-seeded, or rotated without a fresh access token


class _Rotated(Exception):
    """Internal: a malformed answer that carries a new refresh token. Never leaves the flow
    (the caller gets `error`), so the secret is not kept on an exception anyone sees."""

    def __init__(self, error: MalformedTokenResponse, refresh_token: str) -> None:
        super().__init__(error.field)
        self.error = error
        self.refresh_token = refresh_token


def _fetch(
    source: Source, key: str, rec: Record | None, lease: Renew | None = None
) -> Generator[Op, Any, Grant]:
    """One attempt at the source (keeping `lease` alive while an HTTP request is in flight)."""
    if isinstance(source, HttpSource):
        response = yield Http(source.build_request(_prior(rec)), lease)
        try:
            return source.parse_response(response, key)
        except MalformedTokenResponse as exc:
            kept = source.rotated_refresh_token(response) if source.rotating else None
            if kept:
                raise _Rotated(exc, kept) from None
            raise
    if isinstance(source, FunctionSource):
        called: Called = yield Invoke(source, rec.grant() if rec else None)
        return source.parse_result(called.value, key, received_at=called.started_at)
    raise TypeError(f"unsupported source {source!r}")


def _prior(rec: Record | None) -> PriorGrant | None:
    """What a source may build its request from, out of the stored record."""
    if rec is None:
        return None
    return PriorGrant(rec.key, rec.refresh_token, dict(rec.extra))


def _backoff(
    retry: RetryPolicy, key: str, exc: TransientError, retries: int, started: float
) -> Generator[Op, Any, None]:
    """Sleep before retry number `retries`, or raise `RefreshFailed` past the deadline."""
    delay = retry.delay(retries, (yield NOW) - started, exc.retry_after)
    yield _event(
        "refresh.failed",
        key,
        kind="transient",
        detail=exc.detail,
        attempt=retries,
        retry_in=None if delay is None else round(delay, 3),
    )
    if delay is None:
        raise RefreshFailed(key, exc.detail, retries) from None
    yield Sleep(delay)


def mint_flow(source: Source, key: str, retry: RetryPolicy) -> Flow:
    """A brand-new token straight from `source`, never from a store or cache (session-scoped
    tokens), with the same transient-failure retries as a refresh. Yields no store operation."""
    started: float = yield NOW
    retries = 0
    while True:
        try:
            return (yield from _fetch(source, key, None)).token()
        except TransientError as exc:
            retries += 1
            yield from _backoff(retry, key, exc, retries, started)


def _refresh(
    ctx: FlowContext,
    rec: Record | None,
    leased_at: float | None = None,
    held: _Held | None = None,
    marked: bool = False,
) -> Flow:
    """Call the source with retries, then persist. Runs under the lease, which is renewed
    before every attempt (a backoff may have outlived it) unless it was taken moments ago
    (`leased_at`, monotonic): one store round trip less on the common path. `marked`: `Begin`
    already marked `rec`'s refresh token in flight (the first attempt need not)."""
    started: float = yield NOW
    retries = 0
    lost = False  # an earlier attempt's answer never arrived
    held = held or _Held()
    while True:
        fresh_lease = leased_at is not None and started - leased_at < ctx.lease_ttl / 3
        leased_at = None  # later attempts always renew
        if (
            not fresh_lease
            and not (yield Renew(ctx.key, ctx.owner, ctx.lease_ttl))
            and not (yield Acquire(ctx.key, ctx.owner, ctx.lease_ttl))
        ):
            raise LeaseTimeout(ctx.key, (yield NOW) - started)
        if _guards_in_flight(ctx) and rec is not None and rec.refresh_token and not marked:
            # Before the refresh token leaves: a process that takes our lease while we are
            # stalled must not present it again (see _await_in_flight).
            spent = fingerprint(rec.refresh_token)
            yield MarkInFlight(ctx.key, ctx.owner, spent, ctx.request_deadline)
            held.in_flight = True
        marked = False  # a later attempt marks again (its mark may have lapsed meanwhile)
        try:
            lease = Renew(ctx.key, ctx.owner, ctx.lease_ttl)
            grant = yield from _fetch(ctx.source, ctx.key, rec, lease)
        except TransientError as exc:
            if exc.sent and ctx.source.rotating and not lost:
                # The provider may have rotated the refresh token and we never saw the new one.
                # Retry once, at once, with the same one: providers with a grace period accept it.
                lost = True
                yield _event("refresh.answer_lost", ctx.key, detail=exc.detail)
                continue
            retries += 1
            yield from _backoff(ctx.retry, ctx.key, exc, retries, started)
            continue
        except ReauthorizationRequired as exc:
            return (yield from _refused(ctx, rec, exc, lost, held))
        except MalformedTokenResponse as exc:
            yield _event("refresh.failed", ctx.key, kind="malformed", detail=exc.field)
            raise
        except _Rotated as rotated:
            yield _event("refresh.failed", ctx.key, kind="malformed", detail=rotated.error.field)
            yield from _keep_refresh_token(ctx, rec, rotated)
            raise rotated.error from None
        return (yield from _commit(ctx, rec, grant, started, held))


def _keep_refresh_token(
    ctx: FlowContext, rec: Record | None, rotated: _Rotated
) -> Generator[Op, Any, None]:
    """An unusable answer that still carries a new refresh token: the provider has probably
    rotated the old one, so store the new one (invariant 2) before reporting the error."""
    at: float = yield WALL
    base = rec or Record(ctx.key, updated_at=at)
    error = str(rotated.error)
    while not (
        yield Save(
            base.successor(updated_at=at, refresh_token=rotated.refresh_token, last_error=error),
            base.version,
        )
    ):
        latest: Record | None = yield Load(ctx.key)
        base = latest or Record(ctx.key, updated_at=at)
    yield _event("store.refresh_token_kept", ctx.key, reason=rotated.error.field)


def _refused(
    ctx: FlowContext,
    rec: Record | None,
    exc: ReauthorizationRequired,
    lost: bool,
    lease: _Held | None = None,
) -> Flow:
    """A permanent refusal. Invariant 5: first check whether another process rotated the token
    (then our refresh token was simply stale); otherwise persist `needs_reauth` and raise."""
    latest: Record | None = yield Load(ctx.key)
    current = rec.version if rec else 0
    if latest is not None and latest.version > current and latest.state == "ok":
        token = latest.token()
        if token is not None and ctx.fresh(token):
            yield _adopted(ctx, token)
            return token
        if latest.refresh_token and (rec is None or latest.refresh_token != rec.refresh_token):
            # Re-seeded (a login) or rotated by a process whose lease outlived ours: the refused
            # refresh token was simply stale. Versions only grow, so this recursion ends.
            return (yield from _refresh(ctx, latest, held=lease))
    error = ReauthorizationRequired(
        ctx.key, exc.error, exc.description, answer_lost=lost, advice=exc.advice
    )
    at: float = yield WALL
    base = latest or Record(ctx.key, updated_at=at)
    refused = base.successor(updated_at=at, state="needs_reauth", last_error=str(error))
    yield Save(refused, base.version)
    yield _event("refresh.failed", ctx.key, kind="permanent", error=exc.error, answer_lost=lost)
    yield _event("reauth.required", ctx.key, error=exc.error, answer_lost=lost)
    raise error from None


def _kept_extra(source: Source, rec: Record) -> dict[str, Any]:
    """The record's configuration entries that outlive a refresh (`Source.kept_extra`)."""
    return {name: rec.extra[name] for name in source.kept_extra if name in rec.extra}


def _conflict(latest: Record | None, new: Record, sent: str | None) -> str:
    """What a record found in place of the one we meant to write says (after a lost
    compare-and-set, or a store error that may have hidden a commit):

    - "ours": it is our answer: the write committed, its acknowledgement was lost;
    - "theirs": it holds a refresh token that is neither the one we sent nor ours: someone
      refreshed from our committed record, or a login re-seeded it. Ours is older: adopt theirs
      when its access token is fresh (writing ours on top would store a refresh token the
      provider has already rotated);
    - "on top": anything else (our lease lapsed during a slow request and another process wrote
      `needs_reauth` or a conflict with the token we sent): the refresh token we hold is the
      newest the provider issued, so write on top."""
    if latest is None:
        return "on top"
    if latest.access_token == new.access_token and latest.refresh_token == new.refresh_token:
        return "ours"
    newer = latest.refresh_token not in (None, sent, new.refresh_token)
    return "theirs" if newer and latest.state == "ok" else "on top"


def _commit(
    ctx: FlowContext, rec: Record | None, grant: Grant, started: float, lease: _Held
) -> Flow:
    """Invariant 2: the new record (with any rotated refresh token) is durably stored before
    the token is handed to anyone (`_store`). The write is a `Finish`: when it wins, the store
    also clears our in-flight record and releases the lease in the same round trip."""
    at: float = yield WALL
    base = rec or Record(ctx.key, updated_at=at)
    new = base.successor(
        updated_at=at,
        access_token=grant.access_token,
        token_type=grant.token_type,
        expires_at=grant.expires_at,
        refresh_token=grant.refresh_token or base.refresh_token,
        scope=grant.scope or base.scope,
        obtained_at=grant.obtained_at,
        extra={**_kept_extra(ctx.source, base), **grant.extra},
        state="ok",
        last_error=None,
        refresh_count=base.refresh_count + 1,
    )
    stored = yield from _store(ctx, new, base, lease)
    if isinstance(stored, Token):
        return stored  # someone stored a newer one meanwhile: adopted
    token = stored.token()
    assert token is not None
    event = "token.refreshed" if base.access_token else "token.obtained"
    finished: float = yield NOW
    yield _event(
        event,
        ctx.key,
        fingerprint=token.fingerprint,
        version=token.version,
        expires_in=None if token.lifetime is None else round(token.lifetime, 3),
        duration_ms=round((finished - started) * 1000, 1),
    )
    return token


def _store(
    ctx: FlowContext, new: Record, base: Record, lease: _Held
) -> Generator[Op, Any, Record | Token]:
    """Write `new` over `base`: the record as stored, or a newer token adopted instead.

    A conflict is settled by `_conflict` (write on top, ours already there, or theirs). A store
    error after the provider answered (a restart, a dropped connection) is retried within the
    retry deadline instead of dropping the answer, which may hold the only valid refresh token;
    the failed write may have committed, so the record is read before writing again."""
    expected = base.version
    failures, failed_at = 0, 0.0
    uncertain = False  # a Finish failed: it may have committed before the error reached us
    while True:
        try:
            if not uncertain and (yield Finish(new, expected, ctx.owner)):
                lease.held = lease.in_flight = False
                return new
            uncertain = False
            latest: Record | None = yield Load(ctx.key)
        except StoreError as exc:
            failures, uncertain = failures + 1, True
            now: float = yield NOW
            failed_at = failed_at or now
            delay = ctx.retry.delay(failures, now - failed_at, None)
            yield _event("store.retry", ctx.key, detail=str(exc), attempt=failures)
            if delay is None:
                raise
            yield Sleep(delay)
            continue
        outcome = _conflict(latest, new, base.refresh_token)
        if outcome == "ours":  # the failed Finish had committed (and released the lease)
            lease.held = lease.in_flight = False
            return new
        theirs = latest.token() if outcome == "theirs" and latest is not None else None
        if theirs is not None and ctx.fresh(theirs):
            yield _event(
                "token.adopted", ctx.key, fingerprint=theirs.fingerprint, version=theirs.version
            )
            return theirs
        if (latest.version if latest else 0) != expected:
            expected = latest.version if latest else 0
            yield _event("store.conflict", ctx.key, version=expected)
            new = replace(new, version=expected + 1)
