"""What the provider saw: counters, per-path request counts, the refresh and grant logs (tokens
only as fingerprints), so tests synchronise on what happened instead of sleeping."""

from __future__ import annotations

from typing import Any

from .shapes import COUNTER_NAMES
from .state import ProviderState


class CountersModel(ProviderState):
    """Counters and logs of :class:`Emulator` (its ``counters`` snapshot lives there: it closes
    idle sessions first)."""

    @property
    def path_counts(self) -> dict[str, int]:
        """Requests seen per URL path (all methods together)."""
        with self._lock:
            return dict(self._paths)

    @property
    def refresh_log(self) -> list[dict[str, Any]]:
        """Successful refresh_token grants, oldest first; tokens appear only as fingerprints."""
        with self._lock:
            return [dict(entry) for entry in self._refresh_log]

    @property
    def grant_log(self) -> list[dict[str, Any]]:
        """Every refresh_token grant answered, oldest first, refused ones too: who sent it (its
        User-Agent, ``agent``), the token presented and any new one (fingerprints), and the
        ``outcome``: ``rotated`` (accepted), ``reused`` (already rotated), ``revoked``,
        ``expired``, ``unknown`` or ``grace_replay``. Lets a test tell which caller spent which
        refresh token without instrumenting the caller."""
        with self._lock:
            return [dict(entry) for entry in self._grant_log]

    def reset_counters(self) -> None:
        """Zero the counters, the per-path counts and the refresh and grant logs (state is
        kept)."""
        with self._lock:
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._paths.clear()
            self._refresh_log.clear()
            self._grant_log.clear()

    def count(self, name: str, amount: int = 1) -> None:
        """Bump a counter (also used by the HTTP layer)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def count_path(self, path: str) -> None:
        with self._lock:
            self._paths[path] = self._paths.get(path, 0) + 1
