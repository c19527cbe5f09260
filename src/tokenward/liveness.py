"""Is a lease holder provably dead? The signals a process leaves behind, and how to read them.

A lease's holder records a *holder identity* beside the lease (and beside an in-flight record):
space-separated parts, each one signal that another process may check later:

- `p=<boot id>/<pid namespace>/<pid>/<start time>` - the holding process on its host (Linux
  `/proc`). Another process on the same host (same boot, same pid namespace) knows for certain
  whether it still runs: its pid is gone, or it belongs to a process started at another time (a
  reused pid). Elsewhere (another host, another container) it proves nothing.
- `s=<store session>` - added by a network store: a connection that lives as long as the
  holding process (a PostgreSQL session advisory lock, a Redis client id). When the server says
  that connection is gone, so is the process (the kernel closes a dead process's sockets).

Liveness only decides how long a waiter waits before it takes over a lease or spends a refresh
token another process had in flight; never whether a write is correct (the versioned
compare-and-set and the re-read under the lease decide that). So a verdict is True (alive),
False (provably dead) or None (cannot be known: wait out the lease TTL, as before).
"""

from __future__ import annotations

import os
from functools import cache

__all__ = ["holder_parts", "join_holder", "process_alive", "process_identity"]

_PROC = "/proc"


@cache
def _boot_id() -> str | None:
    try:
        with open(f"{_PROC}/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


@cache
def _pid_namespace() -> str | None:
    try:
        return str(os.stat(f"{_PROC}/self/ns/pid").st_ino)
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (field 22 of /proc/<pid>/stat), None
    when there is no such process. The command name (field 2) may hold spaces and parentheses,
    so fields are counted after its last ')'."""
    try:
        with open(f"{_PROC}/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: it runs no more
        return None
    return fields[19]


@cache
def _identity(pid: int) -> str | None:
    boot, namespace = _boot_id(), _pid_namespace()
    if boot is None or namespace is None:
        return None
    try:
        start = _start_time(pid)
    except OSError:
        return None
    return None if start is None else f"{boot}/{namespace}/{pid}/{start}"


def process_identity() -> str | None:
    """This process, as another process on this host can recognise it (None off Linux).
    Computed once per pid, so a forked child gets its own."""
    return _identity(os.getpid())


def process_alive(identity: str) -> bool | None:
    """True while the process `identity` names runs, False when it provably does not, None when
    this process cannot tell (another host or pid namespace, no /proc, a malformed identity)."""
    try:
        boot, namespace, pid, start = identity.split("/")
        number = int(pid)
    except ValueError:
        return None
    if boot != _boot_id() or namespace != _pid_namespace():
        return None
    try:
        current = _start_time(number)
    except OSError:
        return None
    return current == start


def join_holder(session: str | None = None) -> str | None:
    """The holder identity of this process, with a store's `session` signal when it has one."""
    parts = [f"p={identity}"] if (identity := process_identity()) else []
    if session:
        parts.append(f"s={session}")
    return " ".join(parts) or None


def holder_parts(holder: str | None) -> dict[str, str]:
    """`{"p": ..., "s": ...}` from a holder identity (missing parts are absent)."""
    parts: dict[str, str] = {}
    for part in (holder or "").split():
        name, _, value = part.partition("=")
        if value:
            parts[name] = value
    return parts
