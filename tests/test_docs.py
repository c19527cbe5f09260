"""The README quickstart must work when pasted: run it as a user would, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## Quickstart.*?```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no python block under '## Quickstart'"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _quickstart()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == ["200"] * 5
    refreshes = int(lines[5].split()[0])
    assert 2 <= refreshes <= 4  # 5 s of 2-second tokens: obtained once, refreshed twice or so
    assert "fingerprint=" in lines[5]
