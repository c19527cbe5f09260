"""`tokenward.integrations.sdk.ExpiryGuard`: replay-once for vendor SDK calls."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tokenward import TokenManager
from tokenward.integrations.sdk import ExpiryGuard, current_token
from tokenward.testing import fingerprint
from tokenward.testing.server import EmulatorServer


class VendorAuthError(Exception):
    """What a vendor SDK raises on a 401."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class VendorSDK:
    """A stand-in vendor SDK: its own HTTP client, its own exception on 401 / 403."""

    def __init__(self, base_url: str, access_token: str) -> None:
        self._http = httpx2.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {access_token}"}
        )

    def create_order(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/orders", body)

    def admin(self) -> dict[str, Any]:
        return self._call("GET", "/scope-limited", None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        with self._http as http:
            answer = http.request(method, path, json=body)
        if answer.status_code in (401, 403):
            raise VendorAuthError(answer.status_code)
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]


def expiry(manager: TokenManager, **kwargs: Any) -> ExpiryGuard:
    return ExpiryGuard(
        manager, on=VendorAuthError, when=lambda exc: getattr(exc, "status", 0) == 401, **kwargs
    )


def test_decorated_call_gets_the_token_and_is_replayed_once_after_expiry(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    guard = expiry(manager, param="access_token")

    @guard
    def order(body: dict[str, Any], access_token: str) -> dict[str, Any]:
        assert current_token().access_token == access_token
        return VendorSDK(tokenward_emulator.api_url, access_token).create_order(body)

    assert order({"n": 1})["token_fingerprint"] == fingerprint(manager.token().access_token)
    old = manager.token()
    tokenward_emulator.emulator.expire_access_tokens()
    answer = order({"n": 2})
    assert answer["json"] == {"n": 2}
    assert manager.token().version > old.version
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (3, 1)
    assert order.__name__ == "order"


def test_persistent_failure_means_three_calls_then_the_exception(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    tokenward_emulator.emulator.inject("401", endpoint="api", times=5)
    calls = []

    def order() -> dict[str, Any]:
        calls.append(current_token().fingerprint)
        return VendorSDK(tokenward_emulator.api_url, current_token().access_token).create_order({})

    with pytest.raises(VendorAuthError):
        expiry(manager).call(order)
    assert len(calls) == len(set(calls)) == 3  # bounded; each replay with a newer token
    assert tokenward_emulator.emulator.counters["api_calls"] == 3


def test_other_exceptions_are_not_replayed(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    guard = expiry(manager)
    with pytest.raises(VendorAuthError) as info:
        guard.call(
            lambda: VendorSDK(tokenward_emulator.api_url, current_token().access_token).admin()
        )
    assert info.value.status == 403  # insufficient_scope: the predicate says no
    with pytest.raises(KeyError):
        guard.call(lambda: dict[str, int]()["missing"])
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (1, 0)


def test_a_guard_needs_an_exception_type_or_a_predicate(manager: TokenManager) -> None:
    with pytest.raises(ValueError):
        ExpiryGuard(manager)
    assert repr(ExpiryGuard(manager, on=VendorAuthError)) == "ExpiryGuard('ml')"
    with pytest.raises(LookupError):
        current_token()


def test_attempts_replay_a_block_within_the_bound(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    tokenward_emulator.emulator.expire_access_tokens()
    results = []
    for attempt in expiry(manager).attempts():
        with attempt:
            sdk = VendorSDK(tokenward_emulator.api_url, attempt.token.access_token)
            results.append(sdk.create_order({"block": True}))
    assert [r["json"] for r in results] == [{"block": True}]
    assert tokenward_emulator.emulator.counters["api_calls"] == 2

    tokenward_emulator.emulator.inject("401", endpoint="api", times=5)
    with pytest.raises(VendorAuthError):
        for attempt in expiry(manager).attempts():
            with attempt:
                VendorSDK(tokenward_emulator.api_url, attempt.token.access_token).create_order({})
    assert tokenward_emulator.emulator.counters["api_calls"] == 5


def test_many_threads_across_an_expiry_cause_one_refresh(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    guard = expiry(manager, param="access_token")

    @guard
    def order(i: int, access_token: str) -> dict[str, Any]:
        return VendorSDK(tokenward_emulator.api_url, access_token).create_order({"i": i})

    tokenward_emulator.emulator.expire_access_tokens()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(order, range(40)))
    assert [a["json"]["i"] for a in answers] == list(range(40))
    assert tokenward_emulator.emulator.counters["refreshes"] == 1


async def test_async_functions_and_blocks(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    guard = expiry(manager, param="access_token")
    http = httpx2.AsyncClient(base_url=tokenward_emulator.api_url)

    @guard
    async def order(i: int, access_token: str) -> dict[str, Any]:
        answer = await http.post(
            "/orders", json={"i": i}, headers={"Authorization": f"Bearer {access_token}"}
        )
        if answer.status_code == 401:
            raise VendorAuthError(401)
        return answer.json()  # type: ignore[no-any-return]

    tokenward_emulator.emulator.expire_access_tokens()
    answers = await asyncio.gather(*(order(i) for i in range(30)))
    assert [a["json"]["i"] for a in answers] == list(range(30))
    assert tokenward_emulator.emulator.counters["refreshes"] == 1

    tokenward_emulator.emulator.expire_access_tokens()
    seen = []
    async for attempt in guard.aattempts():
        with attempt:
            seen.append(attempt.token.version)
            if len(seen) == 1:
                raise VendorAuthError(401)
    assert len(seen) == 2 and seen[1] > seen[0]
    await http.aclose()
