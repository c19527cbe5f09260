"""docs/cli.md's command reference is generated from the CLI: these tests fail while a command
or option is missing from it (or has no help text), so nothing ships undocumented.

Regenerate after changing a command:  .venv/bin/python -m tokenward.cli_reference docs/cli.md
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tokenward.cli import cli
from tokenward.cli_reference import BEGIN, END, UNDOCUMENTED, render, replace_block

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
REGENERATE = ".venv/bin/python -m tokenward.cli_reference docs/cli.md"


def _block(text: str) -> str:
    return text[text.index(BEGIN) : text.index(END) + len(END) + 1]


def test_docs_cli_md_holds_the_generated_reference() -> None:
    current, wanted = _block(DOC.read_text()), render(cli)
    diff = "\n".join(
        difflib.unified_diff(current.splitlines(), wanted.splitlines(), "docs/cli.md", "CLI", n=1)
    )
    assert current == wanted, f"docs/cli.md is out of date; run `{REGENERATE}`:\n{diff}"


def test_every_command_and_option_has_help_text() -> None:
    text = render(cli)
    assert UNDOCUMENTED not in text, "an option has no help=...: " + next(
        line for line in text.splitlines() if UNDOCUMENTED in line
    )
    for line in text.splitlines():
        if line.startswith("### `"):
            assert line.count("`") == 2  # a heading per command
    assert "### `tokenward serve`" in text and "### `tokenward broker add-client`" in text
    assert "| `--base-url TEXT` | Override the preset's base URL (a sandbox). |" in text


def test_a_new_command_or_option_changes_the_reference() -> None:
    before = render(cli)
    extra = click.Command("extra", help="Something new.", params=[click.Option(["--fast"])])
    cli.add_command(extra)
    try:
        after = render(cli)
    finally:
        cli.commands.pop("extra")
    assert after != before and "### `tokenward extra`" in after
    assert f"| `--fast TEXT` | {UNDOCUMENTED} |" in after  # refused by the test above
    assert render(cli) == before


@pytest.mark.e2e
def test_the_module_rewrites_and_checks_a_document(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(f"# intro\n\n{BEGIN}\nold\n{END}\n\n## after\n")
    check = [sys.executable, "-m", "tokenward.cli_reference", "--check", str(stale)]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 1
    subprocess.run([*check[:3], str(stale)], check=True)
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    text = stale.read_text()
    assert text.startswith("# intro\n\n" + BEGIN) and text.endswith(END + "\n\n## after\n")
    assert text == replace_block(text, render(cli))
