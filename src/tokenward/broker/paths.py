"""Upstream path normalization: the proxy's guard against SSRF and path traversal.

The upstream URL is always the credential's `base_url` plus a path that went through
`upstream_path`, never anything a client chose wholesale. The check works on the *raw* request
path (as received, before percent-decoding), because servers decode at different times: a
`%2e%2e` or `%2f` that is harmless here could become `..` or a new path segment upstream.
Anything doubtful is refused rather than repaired: a client with a legitimate need for such a
path does not exist, and a repaired path would hide an attack.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

__all__ = ["UnsafePath", "join_upstream", "upstream_path"]

# Percent-escapes that decode to a dot, a slash, a backslash, NUL, CR, LF or any other
# control character (and `%25`, which would turn the next decoding into one of those).
# `%3b` too: `;` starts a path parameter that Tomcat and Spring strip (`..;` is `..` there).
_BAD_ESCAPE = re.compile(r"%(2e|2f|5c|25|3b|0[0-9a-f]|1[0-9a-f]|7f)", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Control characters and spaces (code points below 0x21, and DEL).
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class UnsafePath(ValueError):
    """The requested path could leave the credential's base URL; the message says why."""


def upstream_path(raw: str) -> str:
    """The path to append to base_url (with a leading `/`), or `UnsafePath`.

    `raw` is the part of the raw request path after `/v1/proxy/{credential}/`.
    """
    if _CONTROL.search(raw):
        raise UnsafePath("control characters or spaces in the path")
    if "\\" in raw:
        raise UnsafePath("backslash in the path")
    if "#" in raw or "?" in raw:
        raise UnsafePath("fragment or query marker in the path")
    if _BAD_ESCAPE.search(raw):
        raise UnsafePath("encoded dot, slash, backslash, percent or control character")
    if raw.startswith("/") or "//" in raw:
        raise UnsafePath("empty path segment (// could name another host)")
    if _SCHEME.match(raw):
        raise UnsafePath("absolute URL in the path")
    try:  # strict UTF-8: overlong forms (%c0%ae is a dot to lax decoders) are invalid
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePath(
            "percent-escapes that are not valid UTF-8 (overlong forms such as %c0%ae hide dots)"
        ) from None
    # A segment's path parameters (`..;x`) are stripped by some servers: judge what is left.
    segments = {segment.partition(";")[0] for segment in raw.split("/")}
    if "." in segments or ".." in segments:
        raise UnsafePath("dot segment in the path (`..` or `..;`)")
    return "/" + raw


def join_upstream(base_url: str, path: str) -> str:
    """`base_url` (its own path kept) + the normalized `path`."""
    return base_url.rstrip("/") + path
