"""Old spellings of public keywords, still accepted with a `DeprecationWarning`.

Why: a credential is named by its *key* everywhere (`TokenManager(key, ...)`,
`Sessions(key=...)`, `Store.load(key)`, `tokenward.credential(key)`); a few signatures said
`name` for the same string. Renaming them must not break code or docs written against the old
keyword, so the old one keeps working for now and says what to write instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["renamed_keyword"]


def renamed_keyword(
    value: Any, old_keywords: Mapping[str, Any], *, old: str, new: str, call: str
) -> Any:
    """`value` (passed as `new`), else the deprecated `old` keyword's value, with a warning.

    `old_keywords` are the extra keyword arguments the call received: anything else in them is
    a `TypeError`, as Python would raise for an unknown keyword."""
    extra = dict(old_keywords)
    if old in extra:
        warnings.warn(
            f"{call}: the keyword {old!r} is deprecated; pass {new}= instead",
            DeprecationWarning,
            stacklevel=3,
        )
        if value is not None:
            raise TypeError(f"{call}: got both {new!r} and its old name {old!r}")
        value = extra.pop(old)
    if extra:
        raise TypeError(f"{call}() got an unexpected keyword argument {next(iter(extra))!r}")
    if value is None:
        raise TypeError(f"{call}() missing required argument: {new!r}")
    return value
