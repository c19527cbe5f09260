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

import httpx2

__all__ = ["UnsafePath", "join_upstream", "plain_query", "upstream_path", "upstream_url"]

# Percent-escapes that decode to a dot, a slash, a backslash, NUL, CR, LF or any other
# control character (and `%25`, which would turn the next decoding into one of those).
# `%3b` too: `;` starts a path parameter that Tomcat and Spring strip (`..;` is `..` there).
_BAD_ESCAPE = re.compile(r"%(2e|2f|5c|25|3b|0[0-9a-f]|1[0-9a-f]|7f)", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Control characters and spaces (code points below 0x21, and DEL).
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
#: What a proxied query must not hold: control characters, spaces, DEL, `#`, backslashes.
_UNSAFE_QUERY = re.compile(r"[\x00-\x20\x7f#\\]")


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


def plain_query(query: str) -> str:
    """The raw query string as it is, or `UnsafePath` when it holds what no upstream should
    have to parse (control characters, spaces, DEL, `#`, backslashes)."""
    if _UNSAFE_QUERY.search(query):
        raise UnsafePath("control characters in the query")
    return query


def upstream_url(
    base_url: str, path: str, query: str, origin: tuple[str, str, int | None]
) -> httpx2.URL:
    """`base_url` + the normalized `path` + the checked `query`, or `UnsafePath` when the
    result would not be on `origin` (base_url's scheme, host and port)."""
    url = httpx2.URL(join_upstream(base_url, path) + (f"?{query}" if query else ""))
    if (url.scheme, url.host, url.port) != origin:
        raise UnsafePath("the path would leave the credential's host")
    return url
