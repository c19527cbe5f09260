"""Scrubbing secrets out of text a provider wrote.

A token endpoint's `error_description` is the provider's text, and some providers echo what they
were sent: the refresh token, the whole form with the client secret, the API key. That text
ends up in exception messages, `status()["last_error"]`, the stored record, log lines and the
broker's answers, so it is scrubbed once, where it is read (`sources.base.raise_for_error`):
every secret of the request that provoked it is replaced by its fingerprint, in every form a
provider could echo it (as sent, form-encoded, percent-encoded, in an HTTP Basic pair), and the
text is cut to `MAX_PROVIDER_TEXT` characters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from .token import fingerprint
from .transport import HttpRequest

__all__ = ["MAX_PROVIDER_TEXT", "request_secrets", "scrub"]

#: The longest provider text kept (an error description is a sentence, not a page).
MAX_PROVIDER_TEXT = 300
#: Form fields whose values are not secret (kept readable in the provider's text).
_PUBLIC_FIELDS = frozenset(
    {"grant_type", "client_id", "scope", "redirect_uri", "audience", "response_type"}
)
#: Headers that never carry a secret.
_PUBLIC_HEADERS = frozenset({"accept", "content-type", "user-agent", "content-length"})
#: Shorter values are not treated as secrets (replacing "1" everywhere would garble the text).
_SHORTEST = 6


def request_secrets(request: HttpRequest | None) -> set[str]:
    """Every value in `request` that could be a secret: header values (a Basic pair split in
    its two halves, a Bearer token without its scheme) and form values, except the fields
    known to be public."""
    if request is None:
        return set()
    found: set[str] = set()
    for name, value in request.headers.items():
        if name.lower() in _PUBLIC_HEADERS:
            continue
        found.add(value)
        scheme, _, rest = value.partition(" ")
        if rest:
            found.add(rest.strip())
        if scheme.lower() == "basic":
            found.update(_basic_pair(rest.strip()))
    if request.body:
        try:
            form = parse_qsl(request.body.decode("utf-8"), keep_blank_values=False)
        except (UnicodeDecodeError, ValueError):
            form = []
        found.update(value for key, value in form if key not in _PUBLIC_FIELDS)
    return {secret for secret in found if len(secret) >= _SHORTEST}


def _basic_pair(encoded: str) -> list[str]:
    try:
        pair = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    password = pair.partition(":")[2]
    return [unquote(password), password]  # RFC 6749 2.3.1 form-encodes both halves


def scrub(text: str | None, secrets: Iterable[str], limit: int = MAX_PROVIDER_TEXT) -> str | None:
    """`text` with each secret (and its encoded forms) replaced by `[secret <fingerprint>]`,
    at most `limit` characters. Longest secrets first, so a secret inside another goes too."""
    if text is None:
        return None
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) < _SHORTEST:
            continue
        shown = f"[secret {fingerprint(secret)}]"
        for form in {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}:
            text = text.replace(form, shown)
    text = " ".join(text.split())  # no CR/LF: a provider's text must not forge log lines
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
