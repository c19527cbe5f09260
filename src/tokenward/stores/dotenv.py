"""A store inside a `.env` file, the way many people already keep their tokens.

MercadoLibre users typically have `ML_ACCESS_TOKEN=...` and `ML_REFRESH_TOKEN=...` in a `.env`
that their scripts `source` or load with python-dotenv. This store keeps using those variables,
so tokenward can take over an existing file and the file keeps working for everything else.

Why a state line: a record is more than its tokens (version, state, refresh count, ...). All of
it goes into the same file: the tokens in their own variables, everything else as compact JSON in
one `TOKENWARD_STATE_<KEY>='{...}'` line. One atomic rename then writes the whole record, so a
crash can never leave new tokens with an old version (or the reverse), which two files could.

Why edit lines in place: the file belongs to the user. Only the lines of the variables we own
are rewritten (keeping their `export ` prefix and trailing comment); comments, blank lines,
order, quoting and unrelated variables are kept byte for byte, and a missing variable is
appended. Values are written so that bash `source` and python-dotenv read the same string.

Leases and the `flock` live in sidecar files (`<path>.leases`, `<path>.lock`): losing a lease
loses no data, and the lock must sit on a file that is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreCorrupted, StoreError
from .base import Record, check_successor
from .disk import FILE_MODE, atomic_write
from .file import SidecarFileStore
from .record import record_from_data

__all__ = ["DotenvStore"]

#: Record fields that may live in their own variable.
TOKEN_FIELDS = ("access_token", "refresh_token", "expires_at", "token_type", "scope")
#: Fields given a variable of their own when a key has no mapping.
DEFAULT_FIELDS = ("access_token", "refresh_token", "expires_at")
STATE_PREFIX = "TOKENWARD_STATE_"

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What python-dotenv accepts in front of a value; the name pattern is a little stricter.
_ASSIGN = re.compile(r"[ \t]*(?:export[ \t]+)?(?P<name>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*")
_SINGLE = re.compile(r"'((?:\\'|[^'])*)'")
_DOUBLE = re.compile(r'"((?:\\"|[^"])*)"')
_INLINE_COMMENT = re.compile(r"\s+#")
_SINGLE_ESCAPE = re.compile(r"\\([\\'])")
_DOUBLE_ESCAPE = re.compile(r"\\([\\'\"abfnrtv])")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
# Characters that need no quoting in bash nor python-dotenv (no ~, $, quotes, #, spaces).
_BARE = re.compile(r"[A-Za-z0-9_\-.+/=:@%,]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class _Line:
    """One logical line: an assignment `head + value + tail`, or opaque text (`name` None).

    `value` is the value as written (quotes included); `tail` holds what follows it: spaces, a
    comment, the newline. A quoted value may span several physical lines.
    """

    number: int
    head: str
    value: str
    tail: str
    name: str | None = None

    def text(self) -> str:
        return self.head + self.value + self.tail


@dataclass
class _Document:
    lines: list[_Line] = field(default_factory=list)
    mtime: float = field(default_factory=time.time)

    def find(self, name: str) -> _Line | None:
        """The line that defines `name` (the last one: it wins in bash and python-dotenv)."""
        for line in reversed(self.lines):
            if line.name == name:
                return line
        return None

    def value(self, name: str) -> str | None:
        line = self.find(name)
        return None if line is None else _decode(line.value)

    def set(self, name: str, written: str) -> None:
        line = self.find(name)
        if line is not None:
            line.value = written
            return
        if self.lines and not self.lines[-1].text().endswith("\n"):
            self.lines[-1].tail += self.newline()
        self.lines.append(_Line(0, f"{name}=", written, self.newline(), name))

    def remove(self, name: str) -> None:
        self.lines = [line for line in self.lines if line.name != name]

    def newline(self) -> str:
        first = next((line.text() for line in self.lines if "\n" in line.text()), "")
        return "\r\n" if "\r\n" in first else "\n"

    def render(self) -> str:
        return "".join(line.text() for line in self.lines)


def _parse(text: str) -> list[_Line]:
    lines: list[_Line] = []
    pos, number = 0, 1
    if text.startswith("\ufeff"):
        lines.append(_Line(1, "", "", "\ufeff"))
        pos = 1
    while pos < len(text):
        line, pos = _parse_line(text, pos, number)
        number += line.text().count("\n")
        lines.append(line)
    return lines


def _parse_line(text: str, pos: int, number: int) -> tuple[_Line, int]:
    eol = text.find("\n", pos)
    eol = len(text) if eol < 0 else eol + 1
    match = _ASSIGN.match(text, pos, eol)
    if match is None:
        return _Line(number, "", "", text[pos:eol]), eol
    head, name, start = match.group(0), match["name"], match.end()
    quote = {"'": _SINGLE, '"': _DOUBLE}.get(text[start : start + 1])
    closed = quote.match(text, start) if quote else None
    if closed is not None:
        end = closed.end()
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end + 1
        return _Line(number, head, text[start:end], text[end:line_end], name), line_end
    rest = text[start:eol]
    body = rest.rstrip("\r\n")
    comment = _INLINE_COMMENT.search(body)
    value = (body[: comment.start()] if comment else body).rstrip()
    return _Line(number, head, value, rest[len(value) :], name), eol


def _decode(written: str) -> str:
    """The string python-dotenv (and, for what we write, bash) reads from a written value."""
    if len(written) >= 2 and written[0] == written[-1] == "'":
        return _SINGLE_ESCAPE.sub(r"\1", written[1:-1])
    if len(written) >= 2 and written[0] == written[-1] == '"':
        return _DOUBLE_ESCAPE.sub(lambda m: _ESCAPES.get(m[1], m[1]), written[1:-1])
    return written


def _quote(value: str, variable: str) -> str:
    """`value` written so that bash `source` and python-dotenv both read it back unchanged."""
    if value == "" or _BARE.fullmatch(value):
        return value
    if _CONTROL.search(value) is None:
        if "'" not in value and "\\" not in value:
            return f"'{value}'"
        if "$" not in value and "`" not in value:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise StoreError(
        f"the value for {variable} mixes quotes, backslashes, '$' or control characters in a way "
        "bash and python-dotenv would read differently; it was not written"
    )


def _quote_state(data: dict[str, Any]) -> str:
    """Compact JSON in single quotes, with no `\\\\` or `'` inside, so that bash (literal) and
    python-dotenv (which unescapes `\\\\` and `\\'` in single quotes) read the same JSON."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    return "'" + text.replace("\\\\", "\\u005c").replace("'", "\\u0027") + "'"


def _format_number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", key).upper()


class DotenvStore(SidecarFileStore):
    """Records in a `.env` file: tokens in named variables, the rest in a state line.

    `mapping` maps a credential key to `{record_field: VARIABLE}` for any of `access_token`,
    `refresh_token`, `expires_at`, `token_type`, `scope`, e.g.
    `{"ml": {"access_token": "ML_ACCESS_TOKEN", "refresh_token": "ML_REFRESH_TOKEN"}}`.
    A key without a mapping uses `TOKENWARD_<KEY>_ACCESS_TOKEN`, `..._REFRESH_TOKEN` and
    `..._EXPIRES_AT`. Every other field is kept as JSON in `TOKENWARD_STATE_<KEY>`.

    A file whose token variables exist but that has no state line (made by hand) loads as
    version 1 (updated at the file's mtime), so tokenward can take it over. An empty variable
    reads as None. `keys()` lists keys that have a state line or a mapping with tokens;
    `delete()` removes the key's variables and its state line. POSIX only (`fcntl`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mapping: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(path)
        self._mapping = {key: _checked(key, fields) for key, fields in (mapping or {}).items()}

    def variables(self, key: str) -> dict[str, str]:
        """The variables holding `key`'s own fields: `{record_field: VARIABLE}`."""
        if key in self._mapping:
            return dict(self._mapping[key])
        return {name: f"TOKENWARD_{_stem(key)}_{name.upper()}" for name in DEFAULT_FIELDS}

    def state_variable(self, key: str) -> str:
        """The variable holding the rest of `key`'s record as JSON."""
        return STATE_PREFIX + _stem(key)

    def load(self, key: str) -> Record | None:
        return self._record_of(self._read(), key)

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        with self._lock.hold():
            document = self._read()
            current = self._record_of(document, record.key)
            if (current.version if current else 0) != expected_version:
                return False
            self._put(document, record)
            self._write(document)
            return True

    def delete(self, key: str) -> bool:
        with self._lock.hold():
            document = self._read()
            self._drop_leases(key)
            if self._record_of(document, key) is None:
                return False
            for variable in [*self.variables(key).values(), self.state_variable(key)]:
                document.remove(variable)
            self._write(document)
            return True

    def keys(self, prefix: str = "") -> list[str]:
        document = self._read()
        found = {self._state_of(line)["key"] for line in document.lines if _is_state(line)}
        found.update(k for k in self._mapping if self._record_of(document, k) is not None)
        return sorted(k for k in found if k.startswith(prefix))

    # --- reading ------------------------------------------------------------------------------

    def _read(self) -> _Document:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
                mtime = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return _Document()
        return _Document(_parse(raw.decode("utf-8", "surrogateescape")), mtime)

    def _record_of(self, document: _Document, key: str) -> Record | None:
        fields = self.variables(key)
        values = {name: document.value(variable) for name, variable in fields.items()}
        state = document.find(self.state_variable(key))
        if state is None:
            if not values.get("access_token") and not values.get("refresh_token"):
                return None
            data: dict[str, Any] = {"key": key, "version": 1, "updated_at": document.mtime}
            where = f"variables {', '.join(fields.values())}"
        else:
            data = self._state_of(state)
            where = f"line {state.number} ({state.name})"
            self._check_owner(state, data, key)
        for name, value in values.items():
            data[name] = self._field_value(document, name, fields[name], value)
        return record_from_data(self.location, data, where)

    def _state_of(self, line: _Line) -> dict[str, Any]:
        try:
            data = json.loads(_decode(line.value))
        except ValueError as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise StoreCorrupted(
                self.location, f"line {line.number}: {line.name} is not valid JSON ({detail})"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            raise StoreCorrupted(
                self.location, f"line {line.number}: {line.name} is not a JSON object with a key"
            )
        return data

    def _check_owner(self, line: _Line, data: dict[str, Any], key: str) -> None:
        if data["key"] != key:
            raise StoreError(
                f"token store {self.location}: line {line.number}: {line.name} belongs to "
                f"credential {data['key']!r}, not {key!r}; give one of them a mapping"
            )

    def _field_value(self, document: _Document, name: str, variable: str, value: str | None) -> Any:
        if name == "token_type":
            return value or "Bearer"
        if name != "expires_at" or not value:
            return value or None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            line = document.find(variable)
            where = f"line {line.number}: " if line else ""
            raise StoreCorrupted(
                self.location, f"{where}{variable} is not a number (a UNIX time in seconds)"
            )
        return number

    # --- writing ------------------------------------------------------------------------------

    def _put(self, document: _Document, record: Record) -> None:
        data = record.to_dict()
        for name, variable in self.variables(record.key).items():
            value = data.pop(name)
            if value is None:
                written = ""
            elif name == "expires_at":
                written = _format_number(value)
            else:
                written = _quote(str(value), variable)
            document.set(variable, written)
        document.set(self.state_variable(record.key), _quote_state(data))

    def _write(self, document: _Document) -> None:
        try:
            mode = os.stat(self.path).st_mode & 0o7777
        except FileNotFoundError:
            mode = FILE_MODE
        atomic_write(self.path, document.render().encode("utf-8", "surrogateescape"), mode=mode)


def _is_state(line: _Line) -> bool:
    return line.name is not None and line.name.startswith(STATE_PREFIX)


def _checked(key: str, fields: Mapping[str, str]) -> dict[str, str]:
    """Validate one mapping entry: known fields, valid and distinct variable names."""
    unknown = sorted(set(fields) - set(TOKEN_FIELDS))
    if unknown:
        raise ValueError(f"mapping for {key!r}: unknown field(s) {unknown}; use {TOKEN_FIELDS}")
    for name, variable in fields.items():
        if not _VARIABLE.fullmatch(variable) or variable.startswith(STATE_PREFIX):
            raise ValueError(f"mapping for {key!r}: {name} -> {variable!r} is not a usable name")
    if len(set(fields.values())) != len(fields):
        raise ValueError(f"mapping for {key!r}: two fields share one variable")
    return dict(fields)
