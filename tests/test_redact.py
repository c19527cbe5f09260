"""`tokenward.redact`: a provider's text loses every secret of the request it answers, in every
form the provider could echo it, and is cut short (narrow unit tests; the end-to-end proof with
an echoing provider is in tests/test_no_secrets.py)."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus, urlencode

from tokenward.redact import MAX_PROVIDER_TEXT, request_secrets, scrub
from tokenward.token import fingerprint
from tokenward.transport import HttpRequest

REFRESH = "rt-a/b+c=d-0123456789"
SECRET = "cs: with spaces & symbols/+="
KEY = "ak-0123456789abcdef"


def _request() -> HttpRequest:
    pair = base64.b64encode(f"client-1:{quote(SECRET, safe='')}".encode()).decode()
    form = {"grant_type": "refresh_token", "refresh_token": REFRESH, "client_id": "client-1"}
    headers = {"Authorization": f"Basic {pair}", "x-api-key": KEY, "Accept": "application/json"}
    return HttpRequest("POST", "https://idp.example/token", headers, urlencode(form).encode())


def test_the_requests_secrets_are_found() -> None:
    found = request_secrets(_request())
    assert {REFRESH, SECRET, KEY} <= found
    assert "client-1" not in found and "refresh_token" not in found  # public fields stay
    assert "application/json" not in found


def test_every_echoed_form_of_a_secret_is_replaced_by_its_fingerprint() -> None:
    secrets = request_secrets(_request())
    for form in (REFRESH, quote(REFRESH, safe=""), quote_plus(REFRESH), SECRET, quote_plus(SECRET)):
        text = scrub(f"bad grant: {form} (try again)", secrets)
        assert text is not None and form not in text
        assert "[secret " in text and text.startswith("bad grant: ")
    assert f"[secret {fingerprint(KEY)}]" in (scrub(f"key {KEY} refused", secrets) or "")


def test_provider_text_is_one_short_line() -> None:
    text = scrub("line one\r\nINFO forged log line\n" + "x" * 5000, set())
    assert text is not None and "\n" not in text and "\r" not in text
    assert len(text) == MAX_PROVIDER_TEXT and text.endswith("…")
    assert scrub(None, {"anything"}) is None


def test_short_values_are_not_taken_for_secrets() -> None:
    # A one-character form value would otherwise garble every word of the text.
    request = HttpRequest("POST", "https://idp.example/token", {}, b"a=1&b=xyz")
    assert request_secrets(request) == set()
    assert request_secrets(None) == set()
