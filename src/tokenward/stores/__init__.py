"""Credential stores: versioned records with compare-and-set, and cross-process leases."""

from .base import Record, State, Store
from .dotenv import DotenvStore
from .file import JsonFileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .url import open_store, register_scheme

__all__ = [
    "DotenvStore",
    "JsonFileStore",
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "State",
    "Store",
    "open_store",
    "register_scheme",
]
