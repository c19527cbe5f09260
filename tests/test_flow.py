"""The refresh protocol itself, driven by hand, the way h11 is tested: no store, no sockets, no
threads, no sleeps. Each test scripts the answers to the operations `refresh_flow` yields
(`Load`, `Acquire`, `Http`, `Now`, ...) and checks the decision it makes: adopt, refresh, retry,
give up, persist, write on top of a conflict, wait for a refresh token in flight, take over a
dead holder's lease. The interleaving of several leaders is checked in tests/test_flow_model.py.
"""

# mypy narrows `script.op` at each `assert script.op == ...` and does not see `send` change it.
# mypy: disable-error-code="comparison-overlap"
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tokenward.errors import (
    CredentialNotSeeded,
    LeaseTimeout,
    MalformedTokenResponse,
    ReauthorizationRequired,
    RefreshFailed,
    StoreError,
    TransientError,
)
from tokenward.flow import (
    Acquire,
    Begin,
    ClearInFlight,
    Finish,
    Flow,
    FlowContext,
    Holder,
    Http,
    Inspect,
    Load,
    MarkInFlight,
    Notify,
    Now,
    Op,
    Release,
    Renew,
    Save,
    Sleep,
    TakeOver,
    mint_flow,
    refresh_flow,
)
from tokenward.retry import RetryPolicy
from tokenward.sources.oauth2 import ClientCredentialsGrant, RefreshTokenGrant
from tokenward.stores.base import Begun, Claim, InFlightMark, Record
from tokenward.stores.memory import MemoryStore
from tokenward.token import Token, fingerprint
from tokenward.transport import HttpResponse

KEY = "crm"
OWNER = "me"
#: The wall clock of every answer (tokens' expiry counts from here) and of freshness checks.
WALL = 1_000_000.0
RETRY = RetryPolicy(initial=1.0, multiplier=2.0, maximum=10.0, jitter=0.0, deadline=5.0)
SOURCE = RefreshTokenGrant("https://id.example/token", "client", "secret")


def context(source: Any = SOURCE, **changes: Any) -> FlowContext:
    """A context whose tokens are fresh while more than 5 minutes from expiry at `WALL`."""
    fields: dict[str, Any] = {
        "key": KEY,
        "source": source,
        "store": MemoryStore(),
        "owner": OWNER,
        "fresh": lambda token: token.expires_at is None or token.expires_at - 300 > WALL,
        "retry": RETRY,
        "lease_ttl": 30.0,
        "lease_wait": 60.0,
        "request_deadline": 20.0,
    }
    return FlowContext(**{**fields, **changes})


def record(version: int, access: str | None, refresh: str | None, fresh: bool = True) -> Record:
    expires_at = WALL + (3600 if fresh else 60)
    return Record(KEY, version, access, expires_at=expires_at, refresh_token=refresh)


def token_of(rec: Record) -> Token:
    token = rec.token()
    assert token is not None
    return token


def answer(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
        received_at=WALL,
    )


def granted(access: str, refresh: str | None = None) -> HttpResponse:
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
    if refresh is not None:
        body["refresh_token"] = refresh
    return answer(200, body)


REFUSED = answer(400, {"error": "invalid_grant"})
UNAVAILABLE = answer(503, {})


class _Abandoned(Exception):
    pass


class Script:
    """Steps a flow by hand. `Now` is answered from `clock` (monotonic) or `WALL` (the wall
    clock), and `Notify` is collected into
    `events`; every other operation stops the script at `op` until the test answers it with
    `send` (or `throw`). `ops` keeps every operation in order, `Now` and `Notify` included."""

    def __init__(self, flow: Flow, clock: float = 100.0) -> None:
        self.flow = flow
        self.clock = clock
        self.ops: list[Op] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.result: Token | None = None
        self.done = False
        self.op: Op | None = self._until_answer_needed(lambda: next(flow))

    def send(self, value: Any = None) -> Op | None:
        assert not self.done
        self.op = self._until_answer_needed(lambda: self.flow.send(value))
        return self.op

    def throw(self, exc: BaseException) -> Op | None:
        assert not self.done
        self.op = self._until_answer_needed(lambda: self.flow.throw(exc))
        return self.op

    def sleep(self) -> Op | None:
        """Answer a `Sleep`: its time passes on the clock."""
        assert isinstance(self.op, Sleep), self.op
        self.clock += self.op.seconds
        return self.send(None)

    def abandon(self) -> list[str]:
        """End a flow the test has seen enough of, the way a driver does when an operation
        fails: throw the failure in and answer the clean-up. Returns the clean-up's kinds."""
        before = len(self.ops)
        with pytest.raises(_Abandoned):
            self.throw(_Abandoned())
            while True:
                self.send(True)
        return self.kinds()[before:]

    def kinds(self) -> list[str]:
        return [type(op).__name__ for op in self.ops]

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]

    def _until_answer_needed(self, step: Callable[[], Op]) -> Op | None:
        while True:
            try:
                op = step()
            except StopIteration as stop:
                self.result, self.done = stop.value, True
                return None
            self.ops.append(op)
            if isinstance(op, Now):
                step = self._sender(WALL if op.wall else self.clock)
            elif isinstance(op, Notify):
                assert op.key == KEY
                self.events.append((op.event, op.fields))
                step = self._sender(None)
            else:
                return op

    def _sender(self, value: Any) -> Callable[[], Op]:
        return lambda: self.flow.send(value)


def mark(rec: Record) -> InFlightMark:
    assert rec.refresh_token
    return InFlightMark(rec.version, fingerprint(rec.refresh_token), 20.0)


def begin(rec: Record | None) -> Begin:
    """The `Begin` a leader yields: the lease, and the mark of `rec`'s refresh token."""
    return Begin(KEY, OWNER, 30.0, mark(rec) if rec is not None and rec.refresh_token else None)


def leased(script: Script, rec: Record) -> None:
    """Walk a refresh up to its token request: the record is stale, the lease is free, nobody
    has the refresh token in flight, so `Begin` takes the lease and marks it in one go."""
    assert script.op == Load(KEY)
    script.send(rec)
    assert script.op == begin(rec)
    script.send(Begun(True, rec, None, marked=True))
    assert isinstance(script.op, Http)


def written(script: Script) -> Record:
    assert isinstance(script.op, Finish | Save), script.op
    return script.op.record


STALE = record(1, "at-1", "rt-1", fresh=False)
IN_FLIGHT = Claim("stalled", 15.0, fingerprint=fingerprint("rt-1"))


# -- adopt ---------------------------------------------------------------------------------------
def test_adopts_a_fresh_record_without_taking_the_lease() -> None:
    rec = record(2, "at-2", "rt-2")
    script = Script(refresh_flow(context(), token_of(STALE)))
    assert script.op == Load(KEY)
    script.send(rec)
    assert script.done and script.result == token_of(rec)
    assert script.kinds() == ["Notify", "Load", "Notify"]
    assert script.event_names() == ["token.requested", "token.adopted"]


def test_a_caller_without_a_token_takes_the_stored_one_silently() -> None:
    rec = record(2, "at-2", "rt-2")
    script = Script(refresh_flow(context(), None))
    script.send(rec)
    assert script.done and script.result == token_of(rec)
    assert script.event_names() == ["token.requested"]


def test_a_record_the_caller_just_read_is_not_loaded_again() -> None:
    script = Script(refresh_flow(context(), token_of(STALE), force=True, known=STALE))
    assert script.op == begin(STALE)
    assert script.kinds() == ["Notify", "Begin"]
    assert script.abandon() == []  # nothing held yet


def test_a_forced_refresh_does_not_adopt_the_token_it_was_refused_with() -> None:
    rec = record(2, "at-2", "rt-2")
    script = Script(refresh_flow(context(), token_of(rec), force=True))
    script.send(rec)
    assert script.op == begin(rec)
    assert script.abandon() == []


def test_adopts_what_begin_read_when_someone_else_holds_the_lease() -> None:
    rotated = record(2, "at-2", "rt-2")
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(False, rotated))
    assert script.done and script.result == token_of(rotated)
    assert script.kinds() == ["Notify", "Load", "Begin", "Notify"]


def test_adopts_what_the_lease_holder_stored_while_we_waited() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(False, STALE))  # someone else is refreshing
    assert script.op == Acquire(KEY, OWNER, 30.0)
    script.send(False)
    assert script.op == Load(KEY)
    script.send(STALE)
    assert script.op == Inspect(KEY)
    script.send(Holder(Claim("other", 25.0), alive=True))
    assert script.op == Sleep(0.01)
    script.sleep()
    assert script.op == Acquire(KEY, OWNER, 30.0)
    script.send(False)
    assert script.op == Load(KEY)
    rotated = record(2, "at-2", "rt-2")
    script.send(rotated)
    assert script.done and script.result == token_of(rotated)
    assert "Release" not in script.kinds()  # never held it
    assert script.event_names() == ["token.requested", "token.adopted"]


def test_adopts_a_refresh_that_landed_just_before_the_lease() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    rotated = record(2, "at-2", "rt-2")
    script.send(Begun(True, rotated, None, marked=False))  # the mark was for version 1
    assert script.op == Release(KEY, OWNER)
    script.send(True)
    assert script.done and script.result == token_of(rotated)
    assert "ClearInFlight" not in script.kinds()


def test_a_credential_awaiting_reauthorization_is_not_refreshed() -> None:
    rec = Record(KEY, 3, None, refresh_token="rt-refused", state="needs_reauth", last_error="x")
    script = Script(refresh_flow(context(), None))
    with pytest.raises(ReauthorizationRequired):
        script.send(rec)
    assert script.kinds() == ["Notify", "Load"]


def test_an_unseeded_credential_is_refused_under_the_lease_and_the_lease_released() -> None:
    script = Script(refresh_flow(context(), None))
    script.send(None)
    assert script.op == begin(None)
    script.send(Begun(True, None))
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(CredentialNotSeeded):
        script.send(True)


# -- refresh -------------------------------------------------------------------------------------
def test_refresh_takes_the_lease_and_marks_in_one_go_then_finishes_in_one_go() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    assert isinstance(script.op, Http)
    assert script.op.lease == Renew(KEY, OWNER, 30.0)  # kept renewed while in flight
    assert b"refresh_token=rt-1" in (script.op.request.body or b"")
    script.send(granted("at-2", "rt-2"))
    new = written(script)
    assert script.op == Finish(new, 1, OWNER)
    assert (new.version, new.access_token, new.refresh_token) == (2, "at-2", "rt-2")
    assert (new.state, new.refresh_count) == ("ok", 1)
    assert new.updated_at == WALL  # the driver's wall clock: the protocol reads none itself
    script.clock += 0.25
    script.send(True)  # won: the store also cleared the in-flight record and the lease
    assert script.done and script.result is not None
    assert (script.result.access_token, script.result.version) == ("at-2", 2)
    assert script.kinds() == [
        "Notify", "Load", "Begin", "Now", "Now", "Http", "Now", "Finish", "Now", "Notify",
    ]  # fmt: skip
    assert [op for op in script.ops if isinstance(op, Now)] == [Now(), Now(), Now(wall=True), Now()]
    name, fields = script.events[-1]
    assert name == "token.refreshed"
    assert fields["version"] == 2 and fields["duration_ms"] == 250.0


def test_a_first_token_is_obtained_without_any_in_flight_record() -> None:
    source = ClientCredentialsGrant("https://id.example/token", "client", "secret")
    script = Script(refresh_flow(context(source), None))
    script.send(None)
    assert script.op == begin(None)
    script.send(Begun(True, None))
    assert isinstance(script.op, Http)  # no Inspect, no MarkInFlight: nothing to spend twice
    script.send(granted("at-1"))
    assert script.op == Finish(written(script), 0, OWNER)
    assert written(script).version == 1
    script.send(True)
    assert script.done
    assert script.events[-1][0] == "token.obtained"


def test_an_answer_without_a_refresh_token_keeps_the_stored_one() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2"))
    assert written(script).refresh_token == "rt-1"
    script.send(True)
    assert script.done


def test_a_slow_start_renews_the_lease_before_the_request() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, None, marked=False))  # at clock 100
    assert script.op == Inspect(KEY, in_flight=True)
    script.clock += 11  # past a third of the TTL before the request starts
    script.send(None)
    assert script.op == Load(KEY)
    script.send(STALE)
    assert script.op == Renew(KEY, OWNER, 30.0)
    script.send(False)  # lost it ...
    assert script.op == Acquire(KEY, OWNER, 30.0)
    script.send(True)  # ... and took it again
    assert script.op == MarkInFlight(KEY, OWNER, fingerprint("rt-1"), 20.0)
    script.send(None)
    assert isinstance(script.op, Http)
    assert script.abandon() == ["ClearInFlight", "Release"]


def test_a_lease_lost_before_the_request_stops_the_refresh() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, None, marked=False))
    script.clock += 11
    script.send(None)  # Inspect: nothing in flight
    script.send(STALE)  # Load
    script.send(False)  # Renew
    assert script.op == Acquire(KEY, OWNER, 30.0)
    script.send(False)
    assert script.op == Release(KEY, OWNER)  # nothing was marked: nothing to clear
    with pytest.raises(LeaseTimeout):
        script.send(False)
    assert "Http" not in script.kinds()


# -- retry and give up ---------------------------------------------------------------------------
def test_a_transient_failure_is_retried_after_a_backoff_then_succeeds() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(UNAVAILABLE)
    assert script.op == Sleep(1.0)
    assert script.events[-1] == (
        "refresh.failed",
        {
            "kind": "transient",
            "detail": "HTTP 503 from the token endpoint",
            "attempt": 1,
            "retry_in": 1.0,
        },
    )
    script.sleep()
    # The backoff may have outlived the lease and the mark: renew, mark again.
    assert script.op == Renew(KEY, OWNER, 30.0)
    script.send(True)
    assert script.op == MarkInFlight(KEY, OWNER, fingerprint("rt-1"), 20.0)
    script.send(None)
    assert isinstance(script.op, Http)
    script.send(granted("at-2", "rt-2"))
    assert written(script).refresh_token == "rt-2"
    script.send(True)
    assert script.done


def test_retry_after_replaces_the_computed_backoff() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(answer(429, {}, {"retry-after": "3"}))
    assert script.op == Sleep(3.0)
    assert script.abandon() == ["ClearInFlight", "Release"]


def test_gives_up_at_the_retry_deadline_and_releases_the_lease() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(UNAVAILABLE)
    assert script.op == Sleep(1.0)
    script.sleep()
    script.send(True)  # Renew
    script.send(None)  # MarkInFlight
    script.send(UNAVAILABLE)
    assert script.op == Sleep(2.0)
    script.sleep()
    script.send(True)
    script.send(None)
    # 3 s spent; the next backoff (4 s) would end past the 5 s deadline.
    script.send(UNAVAILABLE)
    assert script.op == ClearInFlight(KEY, OWNER)
    assert script.events[-1][1]["retry_in"] is None
    script.send(True)
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(RefreshFailed):
        script.send(True)
    assert "Finish" not in script.kinds() and "Save" not in script.kinds()


def test_a_lost_answer_is_retried_at_once_with_the_same_refresh_token_once() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    first = script.op
    script.throw(TransientError("ReadTimeout talking to id.example", sent=True))
    assert script.event_names()[-1] == "refresh.answer_lost"
    assert script.op == Renew(KEY, OWNER, 30.0)  # no Sleep: at once
    script.send(True)
    assert isinstance(script.op, MarkInFlight)
    script.send(None)
    assert script.op == first  # the same request: the same refresh token
    script.throw(TransientError("ReadTimeout talking to id.example", sent=True))
    assert isinstance(script.op, Sleep)  # the second loss is an ordinary transient failure
    assert script.event_names().count("refresh.answer_lost") == 1
    assert script.abandon() == ["ClearInFlight", "Release"]


def test_a_refusal_after_a_lost_answer_says_so() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.throw(TransientError("ReadTimeout", sent=True))
    script.send(True)  # Renew
    script.send(None)  # MarkInFlight
    script.send(REFUSED)
    script.send(STALE)  # Load: nothing newer
    script.send(True)  # Save needs_reauth
    script.send(True)  # ClearInFlight
    with pytest.raises(ReauthorizationRequired) as refused:
        script.send(True)  # Release
    assert refused.value.answer_lost


def test_a_malformed_answer_is_not_retried() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(answer(200, {"token_type": "Bearer"}))
    assert script.op == ClearInFlight(KEY, OWNER)
    script.send(True)
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(MalformedTokenResponse) as malformed:
        script.send(True)
    assert malformed.value.field == "access_token"
    assert script.kinds().count("Http") == 1 and "Finish" not in script.kinds()
    assert script.events[-1] == ("refresh.failed", {"kind": "malformed", "detail": "access_token"})


def test_a_malformed_answer_carrying_a_new_refresh_token_stores_it_first() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(answer(200, {"refresh_token": "rt-2", "expires_in": "soon"}))
    kept = written(script)
    assert script.op == Save(kept, 1)
    assert (kept.version, kept.refresh_token, kept.access_token) == (2, "rt-2", "at-1")
    assert kept.updated_at == WALL
    script.send(False)  # someone wrote meanwhile: on top of theirs
    assert script.op == Load(KEY)
    theirs = record(2, "at-x", "rt-x", fresh=False)
    script.send(theirs)
    assert written(script).version == 3 and written(script).refresh_token == "rt-2"
    script.send(True)
    assert script.event_names()[-1] == "store.refresh_token_kept"
    script.send(True)  # ClearInFlight
    with pytest.raises(MalformedTokenResponse):
        script.send(True)  # Release


# -- refusals ------------------------------------------------------------------------------------
def test_a_refusal_adopts_the_rotation_another_process_stored() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(REFUSED)
    assert script.op == Load(KEY)
    theirs = record(2, "at-2", "rt-2")
    script.send(theirs)
    assert script.op == ClearInFlight(KEY, OWNER)
    script.send(True)
    assert script.op == Release(KEY, OWNER)
    script.send(True)
    assert script.done and script.result == token_of(theirs)
    assert "Save" not in script.kinds() and "Finish" not in script.kinds()
    assert script.event_names()[-1] == "token.adopted"


def test_a_refusal_refreshes_from_a_newer_refresh_token_another_process_stored() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(REFUSED)
    theirs = record(2, "at-2", "rt-2", fresh=False)  # rotated, but its access token is old
    script.send(theirs)
    assert script.op == Renew(KEY, OWNER, 30.0)
    script.send(True)
    assert script.op == MarkInFlight(KEY, OWNER, fingerprint("rt-2"), 20.0)
    script.send(None)
    assert isinstance(script.op, Http)
    assert b"refresh_token=rt-2" in (script.op.request.body or b"")
    script.send(granted("at-3", "rt-3"))
    assert script.op == Finish(written(script), 2, OWNER)
    script.send(True)
    assert script.done and script.result is not None and script.result.version == 3


def test_a_refusal_with_nothing_newer_persists_needs_reauth_and_raises() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(REFUSED)
    assert script.op == Load(KEY)
    script.send(STALE)
    stored = written(script)
    assert script.op == Save(stored, 1)
    assert (stored.version, stored.state, stored.updated_at) == (2, "needs_reauth", WALL)
    assert stored.refresh_token == "rt-1" and "invalid_grant" in (stored.last_error or "")
    script.send(True)
    assert script.event_names()[-2:] == ["refresh.failed", "reauth.required"]
    assert script.op == ClearInFlight(KEY, OWNER)
    script.send(True)
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(ReauthorizationRequired) as refused:
        script.send(True)
    assert refused.value.error == "invalid_grant" and not refused.value.answer_lost


# -- persist -------------------------------------------------------------------------------------
def test_a_conflict_after_success_writes_on_top_and_says_so() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2", "rt-2"))
    script.send(False)  # our lease expired while the provider was slow: someone wrote v2
    assert script.op == Load(KEY)
    script.send(record(2, "at-x", "rt-x", fresh=False))
    on_top = written(script)
    assert script.op == Finish(on_top, 2, OWNER)
    assert (on_top.version, on_top.access_token, on_top.refresh_token) == (3, "at-2", "rt-2")
    assert script.events[-1] == ("store.conflict", {"version": 2})
    script.send(True)
    assert script.done and script.result is not None and script.result.version == 3


def test_a_store_failure_after_success_is_retried_within_the_deadline() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2", "rt-2"))
    first = script.op
    script.throw(StoreError("connection reset"))
    assert isinstance(script.op, Sleep)
    assert script.events[-1] == ("store.retry", {"detail": "connection reset", "attempt": 1})
    script.sleep()
    # The failed write may have committed before the error: read what is there first.
    assert script.op == Load(KEY)
    script.send(STALE)  # it had not: nothing changed
    assert script.op == first  # the same write again
    script.send(True)
    assert script.done


def test_a_write_that_committed_before_its_error_is_not_written_again() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2", "rt-2"))
    first = script.op
    assert isinstance(first, Finish)
    script.throw(StoreError("connection reset after the commit"))
    script.sleep()
    assert script.op == Load(KEY)
    script.send(first.record)  # ours is there: the acknowledgement was lost, not the write
    assert script.done and script.result is not None
    assert (script.result.access_token, script.result.version) == ("at-2", 2)


def test_a_store_that_stays_down_past_the_deadline_fails_the_refresh() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2", "rt-2"))
    while True:
        script.throw(StoreError("down"))
        if not isinstance(script.op, Sleep):
            break
        script.sleep()
    assert script.op == ClearInFlight(KEY, OWNER)
    script.throw(StoreError("down"))  # clearing fails too: it lapses at its deadline
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(StoreError):
        script.send(True)


# -- waiting on others ---------------------------------------------------------------------------
def test_waits_while_another_process_has_the_same_refresh_token_in_flight() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, IN_FLIGHT, marked=False))  # not ours to mark
    assert script.op == Inspect(KEY, in_flight=True)
    script.send(Holder(IN_FLIGHT, alive=True))
    assert script.events[-1] == ("lease.waiting_in_flight", {"holder": "stalled", "at_most": 15.0})
    assert script.op == Sleep(0.01)
    script.sleep()
    assert script.op == Renew(KEY, OWNER, 30.0)  # keep our lease while we wait
    script.send(True)
    assert script.op == Load(KEY)
    script.send(STALE)  # not yet
    assert script.op == Inspect(KEY, in_flight=True)
    script.send(Holder(IN_FLIGHT, alive=True))
    assert script.op == Sleep(0.02)
    script.sleep()
    script.send(True)  # Renew
    theirs = record(2, "at-2", "rt-2")
    script.send(theirs)  # its answer is stored: adopt it, never spend rt-1 again
    assert script.op == Release(KEY, OWNER)
    script.send(True)
    assert script.done and script.result == token_of(theirs)
    assert "Http" not in script.kinds() and "ClearInFlight" not in script.kinds()


def test_a_rotation_stored_as_its_in_flight_record_goes_is_adopted_not_spent_again() -> None:
    """`Begin` saw the refresh token in flight; by the next look its holder has stored the
    answer and cleared the record. The record `Begin` read names a spent refresh token: read
    it again (the race of the next test, one step earlier)."""
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, IN_FLIGHT, marked=False))
    assert script.op == Inspect(KEY, in_flight=True)
    script.send(None)  # gone
    assert script.op == Load(KEY)
    theirs = record(2, "at-2", "rt-2")
    script.send(theirs)
    assert script.op == Release(KEY, OWNER)
    script.send(True)
    assert script.done and script.result == token_of(theirs)
    assert "Http" not in script.kinds()


def test_a_rotation_stored_after_a_wait_is_adopted_not_spent_again() -> None:
    """The race a clean-clone CI run met on PostgreSQL (test_liveness, stalled leader): the
    waiter reads the record while the stalled leader's answer is still out, then finds the
    in-flight record gone: the leader stored its rotation and dropped the record in one
    `Finish`. The waiter reads again and adopts; the record it read before is stale."""
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, IN_FLIGHT, marked=False))
    assert script.op == Inspect(KEY, in_flight=True)
    script.send(Holder(IN_FLIGHT, alive=True))
    script.sleep()
    assert script.op == Renew(KEY, OWNER, 30.0)
    script.send(True)
    assert script.op == Load(KEY)
    script.send(STALE)  # the answer is not stored yet
    assert script.op == Inspect(KEY, in_flight=True)
    script.send(None)  # gone: stored meanwhile
    assert script.op == Load(KEY)
    theirs = record(2, "at-2", "rt-2")
    script.send(theirs)
    assert script.op == Release(KEY, OWNER)
    script.send(True)
    assert script.done and script.result == token_of(theirs)
    assert "Http" not in script.kinds()


def test_a_refresh_token_in_flight_of_a_dead_process_is_spent_at_once() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, IN_FLIGHT, marked=False))
    script.send(Holder(IN_FLIGHT, alive=False))
    assert script.op == Load(KEY)
    script.send(STALE)
    assert script.op == MarkInFlight(KEY, OWNER, fingerprint("rt-1"), 20.0)
    script.send(None)
    assert isinstance(script.op, Http)
    assert script.abandon() == ["ClearInFlight", "Release"]


def test_an_in_flight_record_of_another_refresh_token_holds_nobody_up() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(True, STALE, None, marked=False))
    script.send(Holder(Claim("other", 15.0, fingerprint=fingerprint("rt-0")), alive=True))
    script.send(STALE)  # Load
    assert isinstance(script.op, MarkInFlight)
    assert script.abandon() == ["Release"]  # the mark failed: nothing to clear


def test_takes_over_the_lease_of_a_provably_dead_holder() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(False, STALE))
    assert script.op == Acquire(KEY, OWNER, 30.0)
    script.send(False)
    script.send(STALE)  # Load
    assert script.op == Inspect(KEY)
    script.send(Holder(Claim("dead", 25.0), alive=False))
    assert script.op == TakeOver(KEY, "dead", OWNER, 30.0)
    script.send(True)
    assert script.events[-1] == ("lease.taken_over", {"dead_holder": "dead"})
    assert script.op == begin(STALE)  # ours now: read the record under it, and mark
    assert "Sleep" not in script.kinds()
    script.send(Begun(True, STALE, None, marked=True))
    assert isinstance(script.op, Http)
    assert script.abandon() == ["ClearInFlight", "Release"]


def test_a_silent_holder_is_waited_out_then_the_wait_gives_up() -> None:
    script = Script(refresh_flow(context(lease_wait=1.0), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(False, STALE))
    script.send(False)  # Acquire
    script.send(STALE)  # Load
    quiet = Holder(Claim("quiet", 25.0), alive=None)  # liveness unknown
    script.send(quiet)
    assert script.events[-1] == (
        "lease.holder_silent",
        {"waiting_on": "lease", "holder": "quiet", "at_most": 25.0},
    )
    pauses = []
    with pytest.raises(LeaseTimeout):
        while True:
            assert isinstance(script.op, Sleep)
            pauses.append(script.op.seconds)
            script.sleep()
            script.send(False)  # Acquire
            script.send(STALE)  # Load
            script.send(quiet)  # Inspect
    assert pauses == [0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2, 0.2]
    name, fields = script.events[-1]
    assert name == "lease.silent_wait_ended" and fields["outcome"] == "timeout"
    assert isinstance(fields["waited"], float) and fields["waited"] > 1.0
    assert "Release" not in script.kinds()


def test_lease_wait_is_measured_on_the_clock_it_is_given() -> None:
    script = Script(refresh_flow(context(lease_wait=60.0), token_of(STALE)))
    script.send(STALE)
    script.send(Begun(False, STALE))
    script.send(False)
    script.send(STALE)
    script.clock += 61
    with pytest.raises(LeaseTimeout):
        script.send(Holder(Claim("busy", 25.0), alive=True))


# -- the in-flight record's lifetime -------------------------------------------------------------
def test_no_in_flight_record_for_a_refresh_token_that_may_be_reused() -> None:
    source = RefreshTokenGrant("https://id.example/token", "client", "secret", rotating=False)
    script = Script(refresh_flow(context(source), token_of(STALE)))
    script.send(STALE)
    assert script.op == Begin(KEY, OWNER, 30.0, None)
    script.send(Begun(True, STALE))
    assert isinstance(script.op, Http)  # no Inspect, no MarkInFlight
    script.send(REFUSED)
    script.send(STALE)
    script.send(True)  # Save needs_reauth
    assert script.op == Release(KEY, OWNER)  # and no ClearInFlight


def test_the_in_flight_record_is_cleared_after_a_failure() -> None:
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.throw(KeyboardInterrupt())
    assert script.op == ClearInFlight(KEY, OWNER)
    script.send(True)
    assert script.op == Release(KEY, OWNER)
    with pytest.raises(KeyboardInterrupt):
        script.send(True)


# -- mint ----------------------------------------------------------------------------------------
def test_mint_asks_the_source_and_touches_no_store() -> None:
    source = ClientCredentialsGrant("https://id.example/token", "client", "secret")
    script = Script(mint_flow(source, KEY, RETRY))
    assert isinstance(script.op, Http) and script.op.lease is None
    script.send(UNAVAILABLE)
    assert script.op == Sleep(1.0)
    script.sleep()
    script.send(granted("session-1"))
    assert script.done and script.result is not None
    assert script.result.access_token == "session-1"
    assert set(script.kinds()) == {"Now", "Http", "Notify", "Sleep"}


def test_a_conflict_with_a_newer_refresh_token_adopts_it_instead_of_writing_on_top() -> None:
    """Someone refreshed from the record our lost-acknowledgement write had stored (or a login
    re-seeded it): its refresh token is newer than ours, so ours is not written on top."""
    script = Script(refresh_flow(context(), token_of(STALE)))
    leased(script, STALE)
    script.send(granted("at-2", "rt-2"))
    script.send(False)
    assert script.op == Load(KEY)
    script.send(record(3, "at-3", "rt-3"))  # fresh, from rt-2 or a login
    assert script.op == Release(KEY, OWNER) or isinstance(script.op, ClearInFlight)
    while not script.done:
        script.send(True)
    assert script.result is not None and script.result.access_token == "at-3"
    assert ("token.adopted", {"fingerprint": script.result.fingerprint, "version": 3}) in (
        script.events
    )
