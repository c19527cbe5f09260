"""The README quickstart must work when pasted: run it as a user would, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the README in a subprocess against the emulator

ROOT = Path(__file__).resolve().parent.parent


def _quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## Quickstart.*?```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no python block under '## Quickstart'"
    return match.group(1)


def _shown_output() -> list[str]:
    """The output the README says the quickstart prints (the text block after it)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## Quickstart.*?```python\n.*?```.*?```text\n(.*?)```", readme, re.S)
    assert match, "README.md shows no output (a text block) after the quickstart"
    return match.group(1).splitlines()


def _pattern(line: str) -> str:
    """A shown line as a regex: the fingerprint and the seconds left vary from run to run."""
    text = re.escape(line)
    text = re.sub(r"fingerprint='[0-9a-f]+'", "fingerprint='[0-9a-f]{12}'", text)
    return re.sub(r"expires_in=\d+s", r"expires_in=\\d+s", text)


def test_readme_quickstart_runs_and_prints_what_the_readme_shows(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _quickstart()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    lines, shown = result.stdout.splitlines(), _shown_output()
    assert len(lines) == len(shown) and lines[:5] == shown[:5] == ["200"] * 5
    refreshes, version = int(lines[5].split()[0]), int(re.findall(r"version=(\d+)", lines[5])[0])
    assert version == refreshes + 1  # as the README explains: the seed is version 1
    if elapsed < 5.8:
        # Five 1-second pauses cross two 2-second expiries: the README's numbers, exactly. (A
        # run slowed past 6 s by a busy machine crosses a third, and may refresh once more.)
        assert re.fullmatch(_pattern(shown[5]), lines[5]), (lines[5], shown[5])
    else:
        assert 3 <= refreshes <= 4
