"""The command reference in docs/cli.md, generated from the `tokenward` command itself.

Why generated: a hand-written table drifted (commands and options missing). The reference is
rendered from click's own description of every command, and `tests/test_cli_reference.py`
fails while docs/cli.md holds another text, so a new command or option cannot ship undocumented.

    python -m tokenward.cli_reference docs/cli.md          # rewrite the generated block
    python -m tokenward.cli_reference --check docs/cli.md  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

__all__ = ["BEGIN", "END", "UNDOCUMENTED", "render", "replace_block"]

BEGIN = (
    "<!-- command reference: generated from the CLI by "
    "`python -m tokenward.cli_reference docs/cli.md`; do not edit by hand -->"
)
END = "<!-- end of the generated command reference -->"

#: Shown for an option without help text (tests/test_cli_reference.py refuses it).
UNDOCUMENTED = "**undocumented**"

#: Options every command accepts (documented once, under "Global options").
GLOBAL = ("--config", "--debug", "--help")


def _commands(
    group: click.Group, ctx: click.Context, prefix: str
) -> Iterator[tuple[str, click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd, sub


def _summary(cmd: click.Command) -> str:
    """The help's first paragraph, on one line."""
    text = inspect.cleandoc(cmd.help or "").split("\n\n", 1)[0]
    return " ".join(text.split())


def _options(cmd: click.Command, ctx: click.Context, skip: tuple[str, ...]) -> list[str]:
    rows = []
    for param in cmd.get_params(ctx):
        if not isinstance(param, click.Option) or any(opt in skip for opt in param.opts):
            continue  # arguments are in the usage line
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = (" ".join(text.split()).replace("|", "\\|") for text in record)
        rows.append(f"| `{names}` | {help_text or UNDOCUMENTED} |")
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| option | meaning |", "| --- | --- |", *rows] if rows else []


def render(root: click.Group, prog: str = "tokenward") -> str:
    """Markdown for every command of `root`: usage, what it does, its options."""
    ctx = click.Context(root, info_name=prog, **root.context_settings)
    lines = [BEGIN, "", "### Global options", ""]
    lines += [
        "They work before or after the command (`tokenward --config x.toml status` is "
        "`tokenward status --config x.toml`); `--config` applies to every command that reads "
        "the configuration, `--json` to those listed with it below.",
        "",
    ]
    lines += _table(_options(root, ctx, ()))
    for path, cmd, sub in _commands(root, ctx, prog):
        usage = " ".join(cmd.collect_usage_pieces(sub))
        lines += ["", f"### `{path}`", "", f"`{path} {usage}`", "", _summary(cmd)]
        options = _options(cmd, sub, GLOBAL)
        if options:
            lines += ["", *_table(options)]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def replace_block(document: str, block: str) -> str:
    """`document` with the text between the markers (included) replaced by `block`."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no generated block (markers {BEGIN!r} ... {END!r})")
    tail = document[end + len(END) :]
    return document[:start] + block + tail.removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenward.cli_reference")
    parser.add_argument("document", type=Path, help="Markdown file holding the markers")
    parser.add_argument("--check", action="store_true", help="exit 1 when out of date")
    args = parser.parse_args(argv)
    from .cli import cli

    current = args.document.read_text(encoding="utf-8")
    wanted = replace_block(current, render(cli))
    if args.check:
        if wanted != current:
            print(f"{args.document}: the command reference is out of date", file=sys.stderr)
            return 1
        return 0
    args.document.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
