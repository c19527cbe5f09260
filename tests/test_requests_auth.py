"""`tokenward.integrations.requests.TokenAuth` against the emulator over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from clients_support import Events, OneWayStream

from tokenward import TokenManager
from tokenward.integrations.requests import TokenAuth
from tokenward.testing import fingerprint
from tokenward.testing.server import EmulatorServer


@pytest.fixture
def session(manager: TokenManager) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = TokenAuth(manager)
        yield session


def test_sets_the_bearer_header(
    tokenward_emulator: EmulatorServer, manager: TokenManager, session: requests.Session
) -> None:
    answer = session.get(tokenward_emulator.api_url + "/items")
    assert answer.status_code == 200
    assert answer.json()["token_fingerprint"] == fingerprint(manager.token().access_token)
    assert answer.history == []


def test_post_meeting_a_401_is_replayed_once_with_the_same_body_and_a_newer_token(
    tokenward_emulator: EmulatorServer,
    manager: TokenManager,
    session: requests.Session,
    events: Events,
) -> None:
    old = manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    answer = session.post(tokenward_emulator.api_url + "/orders", json={"item": 42})
    assert answer.status_code == 200
    assert answer.json()["json"] == {"item": 42}
    new = manager.token()
    assert new.version > old.version
    assert answer.json()["token_fingerprint"] == fingerprint(new.access_token)
    assert [r.status_code for r in answer.history] == [401]
    assert answer.request.headers["Authorization"] == new.authorization
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (2, 1)
    assert "request.replayed" in events.names
    assert not any(old.access_token in line or new.access_token in line for line in events.text)


def test_seekable_file_body_is_rewound_for_the_replay(
    tokenward_emulator: EmulatorServer, manager: TokenManager, session: requests.Session
) -> None:
    manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    body = io.BytesIO(b"xx-payload")
    body.seek(3)  # the body starts where the caller left the file, and so does the replay
    answer = session.post(tokenward_emulator.api_url + "/upload", data=body)
    assert answer.status_code == 200
    assert answer.json()["body"] == "payload"
    assert tokenward_emulator.emulator.counters["api_calls"] == 2


def test_non_seekable_body_is_not_replayed(
    tokenward_emulator: EmulatorServer,
    manager: TokenManager,
    session: requests.Session,
    events: Events,
) -> None:
    manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    answer = session.post(
        tokenward_emulator.api_url + "/upload",
        data=OneWayStream(b"once"),
        headers={"Content-Length": "4"},
    )
    assert answer.status_code == 401
    assert "request.not_replayed" in events.names
    counts = tokenward_emulator.emulator.counters
    # Not replayed, but the rejected token is retired so the next request gets a new one.
    assert (counts["api_calls"], counts["refreshes"]) == (1, 1)


def test_generator_body_is_not_replayed(
    tokenward_emulator: EmulatorServer, manager: TokenManager, session: requests.Session
) -> None:
    manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    answer = session.post(tokenward_emulator.api_url + "/upload", data=iter([b"a", b"b"]))
    assert answer.status_code == 401
    assert tokenward_emulator.emulator.counters["api_calls"] == 1


def test_persistent_401_means_exactly_three_upstream_calls(
    tokenward_emulator: EmulatorServer, session: requests.Session
) -> None:
    tokenward_emulator.emulator.inject("401", endpoint="api", times=5)
    answer = session.post(tokenward_emulator.api_url + "/orders", json={"a": 1})
    assert answer.status_code == 401
    assert len(answer.history) == 2  # every earlier answer, oldest first
    assert tokenward_emulator.emulator.counters["api_calls"] == 3


def test_insufficient_scope_is_not_replayed(
    tokenward_emulator: EmulatorServer, session: requests.Session
) -> None:
    answer = session.get(tokenward_emulator.api_url + "/scope-limited")
    assert answer.status_code == 403
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (1, 0)


def test_many_threads_across_an_expiry_cause_one_refresh(
    tokenward_emulator: EmulatorServer, manager: TokenManager, session: requests.Session
) -> None:
    manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    url = tokenward_emulator.api_url + "/items"
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: session.post(url, json={"i": i}).status_code, range(48)))
    assert statuses == [200] * 48
    assert tokenward_emulator.emulator.counters["refreshes"] == 1


def test_custom_rule_mercadolibre_ignores_other_401_bodies(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    from tokenward import ExpiryRule

    with requests.Session() as session:
        session.auth = TokenAuth(manager, ExpiryRule.mercadolibre())
        tokenward_emulator.emulator.inject("401", endpoint="api")
        answer = session.get(tokenward_emulator.api_url + "/items")
        assert answer.status_code == 200  # {"message": "invalid_token"} -> replayed
        no_auth = requests.get(tokenward_emulator.api_url + "/items")
        assert no_auth.json()["message"] == "authorization required"
    assert repr(TokenAuth(manager)) == "TokenAuth('ml')"
