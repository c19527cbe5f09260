"""The emulated provider, transport-free: :class:`Emulator` composes the model's parts."""

from __future__ import annotations

from .counters import CountersModel
from .faults import FaultsModel
from .grants import GrantsModel
from .sessions import SessionsModel


class Emulator(GrantsModel, SessionsModel, FaultsModel, CountersModel):
    """Provider state shared by the HTTP server thread and test code (one lock guards it all).

    Settings are plain attributes and may be changed at any time, also while requests are in
    flight. Time comes from :meth:`now`, which :meth:`advance` can move forward so tests can
    expire tokens without sleeping.
    """

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of every counter, plus the ``sessions_open`` gauge."""
        with self._lock:
            self._reap_sessions()
            snapshot = dict(self._counters)
            snapshot["sessions_open"] = len(self._sessions)
        return snapshot
