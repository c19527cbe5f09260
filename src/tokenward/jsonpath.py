"""Dotted paths into decoded JSON (`data.token`, `errors.0.extensions.code`).

Used by API-key exchange (where the token sits in the answer) and by expiry rules (which JSON
field says "expired"). A full JSONPath library would be more than these two needs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING", "lookup"]

#: Returned by `lookup` when the path does not exist (None may be a real value).
MISSING: Any = object()


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted `path`, or `MISSING` when absent; digits index into lists."""
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node
