"""A sandbox in which the documentation's snippets run exactly as written.

The docs talk to real providers (`https://api.mercadolibre.com`, `https://api.heygen.com`) and
to a broker on `127.0.0.1:8421`. Tests have no internet and share the machine, so the sandbox
supplies a small fake world instead of editing the snippets:

- a provider emulator, registered with the placeholder values the docs use (client
  `1234567890` with secret `...`: `export ML_CLIENT_SECRET=...` then really is the secret);
- the providers' public URLs mapped onto the emulator (and `127.0.0.1:8421` onto the broker the
  sandbox started) for Python (a `sitecustomize` that rewrites httpx2 requests), for `curl` (a
  wrapper on PATH) and for the browser that `tokenward login` opens (`$BROWSER`);
- its own HOME, XDG directories and working directory.

Snippets are read from the Markdown files; `tests/test_docs_snippets.py` says how each one runs
and fails when a snippet has no runner, so a new snippet cannot go untested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOC_CLIENT_ID, DOC_CLIENT_SECRET = "1234567890", "..."

#: Rewrites every Python process of the sandbox applies to httpx2 requests (tokenward's HTTP).
SITECUSTOMIZE = """
import json, os
_MAP = os.environ.get("TW_DOCS_MAP")

def _mapped(url):
    for old, new in json.load(open(_MAP)):
        if url.startswith(old):
            return new + url[len(old):]
    return None

if _MAP:
    import httpx2

    def _wrap(cls, name):
        original = getattr(cls, name)

        def handle(self, request):
            target = _mapped(str(request.url))
            if target is not None:
                request.url = httpx2.URL(target)
            return original(self, request)

        setattr(cls, name, handle)

    _wrap(httpx2.HTTPTransport, "handle_request")
    _wrap(httpx2.AsyncHTTPTransport, "handle_async_request")
"""

#: `curl` on the sandbox's PATH: the same URL map, and non-2xx answers fail the snippet.
CURL = """#!{python}
import json, os, sys
mapping = json.load(open(os.environ["TW_DOCS_MAP"]))
args = []
for arg in sys.argv[1:]:
    for old, new in mapping:
        if arg.startswith(old):
            arg = new + arg[len(old):]
            break
    args.append(arg)
os.execv("{curl}", ["curl", "-sS", "--fail-with-body", *args])
"""

#: `$BROWSER`: a person who approves the login at once (the emulator's authorize page does).
BROWSER = """#!{python}
import json, os, sys
import httpx2
url = sys.argv[1]
for old, new in json.load(open(os.environ["TW_DOCS_MAP"])):
    if url.startswith(old):
        url = new + url[len(old):]
        break
page = httpx2.get(url, follow_redirects=True, timeout=30)
open(os.environ["TW_DOCS_BROWSER_LOG"], "a").write(f"{{page.status_code}} {{page.text[:80]}}\\n")
"""


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    doc: str
    index: int
    lang: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0] if self.text else ""


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    found = re.findall(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M)
    return [Block(doc, i, lang, body) for i, (lang, body) in enumerate(found)]


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """A console block as (command, expected output lines). Blocks with `$ ` prompts have
    output lines between commands; blocks without prompts are only commands. Comment lines
    and trailing `# comments` of output lines are left out; `\\` continues a command."""
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    result: list[tuple[str, list[str]]] = []
    continuing = False
    for line in lines:
        if continuing:
            result[-1] = (result[-1][0] + "\n" + line, result[-1][1])
            continuing = line.endswith("\\")
            continue
        if prompted and not line.startswith("$ "):
            if line.startswith("#") or not line.strip() or not result:
                continue
            result[-1][1].append(re.sub(r"\s+# .*$", "", line))
            continue
        command = line[2:] if prompted else line
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        result.append((command, []))
        continuing = command.endswith("\\")
    return result


def matches(expected: list[str], actual: str) -> bool:
    """`actual` fits the shown output: `...` stands for anything, whitespace is not compared
    (the docs wrap long lines)."""
    shown = "".join("".join(expected).split())
    pattern = ".*?".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, "".join(actual.split()), re.S) is not None


class World:
    """The sandbox: directories, environment, URL map, and the processes it started."""

    def __init__(self, base: Path, emulator: Any) -> None:
        self.base = base
        self.emulator = emulator
        self.work = base / "work"
        self.bin = base / "bin"
        for path in (self.work, self.bin, base / "home", base / "py"):
            path.mkdir(parents=True, exist_ok=True)
        emulator.emulator.add_client(DOC_CLIENT_ID, DOC_CLIENT_SECRET)
        self.map_file = base / "map.json"
        self.mapping: list[tuple[str, str]] = [
            ("https://api.mercadolibre.com/oauth/", f"{emulator.url}/oauth/"),
            ("https://api.mercadolibre.com/", f"{emulator.url}/api/"),
            ("https://auth.mercadolibre.com/authorization", f"{emulator.url}/authorize"),
            ("https://api.heygen.com/", f"{emulator.url}/"),
        ]
        self._write_map()
        (base / "py" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        curl = shutil.which("curl") or "/usr/bin/curl"
        self._script("curl", CURL.format(python=sys.executable, curl=curl))
        self._script("browser", BROWSER.format(python=sys.executable))
        self.env = {
            "PATH": f"{self.bin}:{BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(base / "home"),
            "XDG_CONFIG_HOME": str(base / "home" / ".config"),
            "XDG_DATA_HOME": str(base / "home" / ".local" / "share"),
            "PYTHONPATH": str(base / "py"),
            "TW_DOCS_MAP": str(self.map_file),
            "TW_DOCS_BROWSER_LOG": str(base / "browser.log"),
            "BROWSER": str(self.bin / "browser"),
            "LANG": "C.UTF-8",
        }
        self.exports = base / "exports.sh"
        self.exports.write_text("")
        self.processes: list[subprocess.Popen[str]] = []
        #: The broker a snippet started, for a later snippet that reads its log.
        self.broker: subprocess.Popen[str] | None = None

    def _script(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def _write_map(self) -> None:
        self.map_file.write_text(json.dumps(self.mapping))

    def map(self, old: str, new: str) -> None:
        self.mapping.insert(0, (old, new))
        self._write_map()

    def sh(self, commands: list[str], cwd: Path | None = None, timeout: float = 120) -> list[str]:
        """Run `commands` in one bash session (so `KEY=...` reaches the next line), keeping
        exported variables for the next block; returns each command's stdout and stderr.
        A failing command fails the snippet (`set -e -o pipefail`)."""
        marker = "@@tokenward-docs-command@@"
        body = "".join(f"echo {marker}\n{command}\n" for command in commands)
        script = (
            f"exec 2>&1\nsource {self.exports}\nset -e -o pipefail\n{body}"
            f"export -p > {self.exports}.new && mv {self.exports}.new {self.exports}\n"
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd or self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        outputs = done.stdout.split(marker + "\n")[1:]
        if done.returncode != 0:
            failed = commands[len(outputs) - 1] if outputs else "(before the first command)"
            raise AssertionError(
                f"{failed!r} exited {done.returncode}:\n{outputs[-1] if outputs else done.stdout}"
            )
        return outputs

    def python(self, code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, f"the snippet failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, args: list[str]) -> subprocess.Popen[str]:
        """A long-running command (`tokenward serve`), stopped when the world ends."""
        process = subprocess.Popen(
            args,
            cwd=self.work,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


def announced_url(process: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """The address `tokenward serve` says it listens on, and the lines it printed until then."""
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if "listening on" in line:
            return line.split("listening on ")[1].split()[0], lines
    raise AssertionError(f"serve exited ({process.wait()}):\n" + "\n".join(lines))


def environment_without_tokenward() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
