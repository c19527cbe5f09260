"""The examples of docs/clients.md and docs/sessions.md run, against the emulator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(name: str) -> list[str]:
    found = _BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))
    assert found, f"no python examples in {name}"
    return found


def run(name: str, code: str, index: int, namespace: dict[str, Any]) -> None:
    exec(compile(code, f"{name} (example {index})", "exec"), namespace)


def test_clients_examples_run_and_each_meets_an_expired_token(
    tokenward_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    emulator = tokenward_emulator.emulator
    monkeypatch.setenv("ML_TOKEN_URL", tokenward_emulator.token_url)
    monkeypatch.setenv("ML_CLIENT_ID", TEST_CLIENT_ID)
    monkeypatch.setenv("ML_CLIENT_SECRET", TEST_CLIENT_SECRET)
    monkeypatch.setenv("ML_REFRESH_TOKEN", emulator.issue_refresh_token(TEST_CLIENT_ID))
    monkeypatch.setenv("ML_API_URL", tokenward_emulator.api_url)
    examples = blocks("clients.md")
    namespace: dict[str, Any] = {"__name__": "docs_clients"}
    run("clients.md", examples[0], 0, namespace)
    namespace["manager"].token()
    for index, code in enumerate(examples[1:], start=1):
        emulator.expire_access_tokens()  # every example has to get through an expiry
        run("clients.md", code, index, namespace)
    out = capsys.readouterr().out
    assert "{'item': 42}" in out and "{'item': 45}" in out
    assert "401" not in out.replace("[401]", "")  # only in requests' history
    assert emulator.counters["refreshes"] >= 4
    namespace["manager"].close()


def test_sessions_examples_run_and_leave_no_session_open(
    tokenward_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("HEYGEN_BASE_URL", tokenward_emulator.url)
    monkeypatch.setenv("HEYGEN_API_KEY", TEST_API_KEY)
    namespace: dict[str, Any] = {"__name__": "docs_sessions"}
    for index, code in enumerate(blocks("sessions.md")):
        run("sessions.md", code, index, namespace)
    emulator = tokenward_emulator.emulator
    counts = emulator.counters
    assert (counts["session_token_requests"], counts["sessions_stopped"]) == (2, 2)
    assert emulator.open_sessions() == []
    assert capsys.readouterr().out.count("\n") == 2
