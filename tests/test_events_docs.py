"""The examples of docs/events.md run as written, against the emulator (`manager` is the one
thing they take from their surroundings, as the page says)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

# The SDK comes with tokenward[dev]; a venv installed before it was added skips, not errors.
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import export

from tokenward.manager import TokenManager
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer

pytestmark = pytest.mark.timeout(60)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "events.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


class _Console(export.ConsoleSpanExporter):
    """The SDK's console exporter writing to the `sys.stdout` of now (capsys's): its default
    stream is the one of when the module was first imported."""

    def __init__(self) -> None:
        super().__init__(out=sys.stdout)


def test_events_examples_run(
    tokenward_emulator: EmulatorServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "ConsoleSpanExporter", _Console)
    emulator = tokenward_emulator.emulator
    source = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    manager = TokenManager("ml", source, MemoryStore())
    manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
    subscribe, reauth, otel = _BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    try:
        namespace: dict[str, Any] = {"__name__": "docs_events", "manager": manager}
        exec(compile(subscribe, "events.md (subscribe)", "exec"), namespace)
        assert "token.obtained ml {'fingerprint':" in capsys.readouterr().out

        # The pager prints when a refusal arrives while it is subscribed, not after close().
        head, tail = reauth.split("# ... later, to stop:\n")
        exec(compile(head, "events.md (reauth)", "exec"), namespace)
        emulator.inject("invalid_grant")
        with pytest.raises(Exception, match="invalid_grant"):
            manager.refresh()
        exec(compile(tail, "events.md (reauth, close)", "exec"), namespace)
        assert "credential ml needs a login: invalid_grant" in capsys.readouterr().out
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))

        exec(compile(otel, "events.md (otel)", "exec"), namespace)
        out = capsys.readouterr().out
        assert '"name": "tokenward.refresh"' in out and '"tokenward.outcome": "obtained"' in out
    finally:
        manager.close()
