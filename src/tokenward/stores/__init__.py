"""Credential stores: versioned records with compare-and-set, and cross-process leases."""

from typing import TYPE_CHECKING, Any

from .base import Claim, Record, State, Store
from .dotenv import DotenvStore
from .encrypted import EncryptedStore, Keyring, StoreDecryptionError
from .file import JsonFileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .url import open_store, register_scheme

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore
    from .redis import RedisStore as RedisStore

#: Network stores, imported on first access so their extras (`redis`, `postgres`) stay optional
#: (and left out of `__all__`, so `import *` does not need them either).
_LAZY = {"RedisStore": ".redis", "PostgresStore": ".postgres"}

__all__ = [
    "Claim",
    "DotenvStore",
    "EncryptedStore",
    "JsonFileStore",
    "Keyring",
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "State",
    "Store",
    "StoreDecryptionError",
    "open_store",
    "register_scheme",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
