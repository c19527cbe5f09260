"""`broker.lockout.FailedAuthLimiter`: per-address and global failed-authentication budgets
(unit level; tests/test_broker_hostile.py proves it over HTTP against `tokenward serve`).

Refill rates are tiny, so nothing refills while a test runs: no timing involved."""

from __future__ import annotations

import dataclasses

import pytest

from tokenward.broker.auth import BrokerError
from tokenward.broker.config import Limits
from tokenward.broker.lockout import FailedAuthLimiter

SLOW = 1e-6  # tokens per second: no refill within a test


def _limiter(burst: int = 3, global_burst: int = 100) -> FailedAuthLimiter:
    limits = dataclasses.replace(
        Limits(),
        auth_failure_burst=burst,
        auth_failure_rate=SLOW,
        auth_failure_global_burst=global_burst,
        auth_failure_global_rate=SLOW,
    )
    return FailedAuthLimiter(limits)


def test_an_address_is_refused_once_its_budget_is_spent() -> None:
    limiter = _limiter(burst=3)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(BrokerError) as refused:
        limiter.check("10.0.0.1")
    assert refused.value.status == 429 and refused.value.error == "auth_throttled"
    assert int(refused.value.headers["Retry-After"]) >= 1
    limiter.check("10.0.0.2")  # another address is not affected


def test_the_global_budget_stops_addresses_that_failed_but_not_clean_ones() -> None:
    limiter = _limiter(burst=10, global_burst=4)
    for n in range(4):  # four addresses, one failure each: the global budget is spent
        limiter.failed(f"10.0.1.{n}")
    with pytest.raises(BrokerError):
        limiter.check("10.0.1.0")  # its own budget is fine, the global one is not
    limiter.check("10.0.2.1")  # an address without failures goes on


def test_the_remembered_addresses_are_bounded() -> None:
    limiter = _limiter()
    for n in range(10_050):
        limiter.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(limiter) == 10_000
