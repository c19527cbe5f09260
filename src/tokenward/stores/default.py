"""The default store: SQLite in the user's data directory, shared by every program of the user.

`TOKENWARD_STORE` (a store URL) overrides it, e.g. `TOKENWARD_STORE=memory://` in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .base import Store

__all__ = ["default_store", "default_store_path"]


def default_store_path() -> Path:
    """`<user data dir>/tokenward/tokens.db` (e.g. `~/.local/share/tokenward/tokens.db`)."""
    return Path(platformdirs.user_data_dir("tokenward", appauthor=False)) / "tokens.db"


def default_store() -> Store:
    """The store used when none is given."""
    url = os.environ.get("TOKENWARD_STORE")
    if url:
        from .url import open_store

        return open_store(url)
    from .sqlite import SQLiteStore

    return SQLiteStore(default_store_path())
