"""The emulator's grant log (who spent which refresh token, and what the provider answered) and
holds that notice a client killed while its request waits: what the demo reads its figures from.
Real HTTP, a real process killed with SIGKILL; synchronised on the emulator's events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx2
import pytest

from tokenward.testing import Emulator, EmulatorServer
from tokenward.testing.emulator import fingerprint

pytestmark = pytest.mark.e2e  # its fixture runs the emulator


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    emulator = Emulator(revoke_family_on_reuse=True)
    emulator.add_client("app", "app-secret")
    with EmulatorServer(emulator) as running:
        yield running


def refresh(server: EmulatorServer, token: str, agent: str) -> httpx2.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    form |= {"client_id": "app", "client_secret": "app-secret"}
    return httpx2.post(server.token_url, data=form, headers={"User-Agent": agent})


def test_grant_log_names_who_presented_which_token_and_the_outcome(
    server: EmulatorServer,
) -> None:
    emulator = server.emulator
    first = emulator.issue_refresh_token("app")
    second = refresh(server, first, "worker/1").json()["refresh_token"]
    assert refresh(server, first, "worker/2").status_code == 400  # reuse: family revoked
    assert refresh(server, second, "worker/1").status_code == 400
    assert refresh(server, "TG-not-a-token", "worker/3").status_code == 400

    log = emulator.grant_log
    assert [(e["agent"], e["outcome"]) for e in log] == [
        ("worker/1", "rotated"),
        ("worker/2", "reused"),
        ("worker/1", "revoked"),
        ("worker/3", "unknown"),
    ]
    assert log[0]["presented"] == log[1]["presented"] == fingerprint(first)
    assert log[0]["new"] == log[2]["presented"] == fingerprint(second)
    assert log[0]["family"] == log[1]["family"] == log[2]["family"] is not None
    assert emulator.counters["invalid_grant"] == 3
    assert first not in repr(log) and second not in repr(log)
    assert httpx2.get(f"{server.url}/_emulator/grant-log").json() == log
    emulator.reset_counters()
    assert emulator.grant_log == []


def test_a_client_killed_while_held_at_received_is_abandoned_not_processed(
    server: EmulatorServer,
) -> None:
    emulator = server.emulator
    token = emulator.issue_refresh_token("app")
    hold = emulator.hold("token", stage="received")
    code = (
        "import sys, httpx2; httpx2.post(sys.argv[1], data={'grant_type': 'refresh_token', "
        "'refresh_token': sys.argv[2], 'client_id': 'app', 'client_secret': 'app-secret'}, "
        "headers={'User-Agent': 'victim'}, timeout=60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code, server.token_url, token])
    try:
        hold.wait(timeout=30)
        assert hold.agents == ["victim"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert hold.client_gone.wait(timeout=30)
    finally:
        hold.release()
        if process.poll() is None:
            process.kill()
            process.wait()
    response = refresh(server, token, "survivor")  # the next request is processed as usual
    assert response.status_code == 200
    counters = emulator.counters
    assert counters["abandoned_requests"] == 1
    assert counters["refreshes"] == 1 and counters["invalid_grant"] == 0
    assert [e["agent"] for e in emulator.grant_log] == ["survivor"]


def test_a_client_that_stays_is_served_after_the_release(server: EmulatorServer) -> None:
    emulator = server.emulator
    token = emulator.issue_refresh_token("app")
    hold = emulator.hold("token", stage="received")
    with httpx2.Client() as client:
        form = {"grant_type": "refresh_token", "refresh_token": token}
        form |= {"client_id": "app", "client_secret": "app-secret"}
        answers: list[int] = []
        sender = threading.Thread(
            target=lambda: answers.append(client.post(server.token_url, data=form).status_code)
        )
        sender.start()
        hold.wait(timeout=30)
        hold.release()
        sender.join(timeout=30)
    assert answers == [200]
    assert not hold.client_gone.is_set()
    assert emulator.counters["abandoned_requests"] == 0
