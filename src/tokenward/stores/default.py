"""The default store: SQLite in the user's data directory, shared by every program of the user.

`TOKENWARD_STORE` (a store URL) overrides it, e.g. `TOKENWARD_STORE=memory://` in tests.
`TOKENWARD_ENCRYPTION_KEY` (keys, comma-separated, newest first) encrypts its secrets at rest
(see `stores/encrypted.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .base import Store
from .encrypted import Keyring, encrypt_store

__all__ = ["default_store", "default_store_path"]


def default_store_path() -> Path:
    """`<user data dir>/tokenward/tokens.db` (e.g. `~/.local/share/tokenward/tokens.db`)."""
    return Path(platformdirs.user_data_dir("tokenward", appauthor=False)) / "tokens.db"


def default_store(keys: Keyring | None = None) -> Store:
    """The store used when none is given, encrypted with `keys` (or with the keys in
    `$TOKENWARD_ENCRYPTION_KEY`) when there are any."""
    url = os.environ.get("TOKENWARD_STORE")
    if url:
        from .url import open_store

        return encrypt_store(open_store(url), keys)
    from .sqlite import SQLiteStore

    return encrypt_store(SQLiteStore(default_store_path()), keys)
