"""The hand-made token refresher that teams ship (the demo's "before" code).

This is the fix people write for an API with rotating refresh tokens (MercadoLibre style), kept
as close to the real thing as possible so the demo races it, not a strawman:

- the tokens live in a `.env` file and in module globals, loaded once when the module is
  imported (each process of a pipeline imports it, so each process has its own copy);
- `http_get` / `http_post` / `http_put` see a 401 whose body says `invalid_token` or `expired`,
  call `refresh_token()`, and retry the request once (`_retry_count` prevents a loop);
- `refresh_token()` does nothing if the last refresh started less than `REFRESH_COOLDOWN`
  seconds ago ("another thread just did it"), otherwise posts the refresh token, updates the
  globals and rewrites `.env`.

It uses only `requests` and `python-dotenv`, like the scripts it stands for. The demo sets
`REFRESH_COOLDOWN` (10 s in the original) in the environment, scaled to its short tokens.
"""

from __future__ import annotations

import os
import time
from typing import Any

import requests
from dotenv import dotenv_values, set_key

ENV_FILE = ".env"
REFRESH_COOLDOWN = float(os.environ.get("REFRESH_COOLDOWN", "10"))  # seconds
TIMEOUT = 10

_env = dotenv_values(ENV_FILE)
API_URL = _env.get("API_URL") or ""
TOKEN_URL = _env.get("TOKEN_URL") or ""
CLIENT_ID = _env.get("CLIENT_ID") or ""
CLIENT_SECRET = _env.get("CLIENT_SECRET") or ""
REFRESH_TOKEN = _env.get("REFRESH_TOKEN") or ""
ACCESS_TOKEN = _env.get("ACCESS_TOKEN") or ""

session = requests.Session()
session.headers["User-Agent"] = f"orders-pipeline/{os.getpid()}"
_last_refresh = 0.0


def refresh_token() -> None:
    """Get a new token pair, unless a refresh started less than REFRESH_COOLDOWN ago."""
    global ACCESS_TOKEN, REFRESH_TOKEN, _last_refresh
    if time.time() - _last_refresh < REFRESH_COOLDOWN:
        return  # refreshed a moment ago (by another thread): the retry uses the new token
    _last_refresh = time.time()
    response = session.post(
        TOKEN_URL,
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
        },
        timeout=TIMEOUT,
    )
    tokens = response.json()
    ACCESS_TOKEN = tokens.get("access_token", ACCESS_TOKEN)
    REFRESH_TOKEN = tokens.get("refresh_token", REFRESH_TOKEN)
    set_key(ENV_FILE, "ACCESS_TOKEN", ACCESS_TOKEN)
    set_key(ENV_FILE, "REFRESH_TOKEN", REFRESH_TOKEN)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ACCESS_TOKEN}"}


def _token_expired(response: requests.Response) -> bool:
    return response.status_code == 401 and (
        "invalid_token" in response.text or "expired" in response.text
    )


def http_get(path: str, params: Any = None, _retry_count: int = 0) -> requests.Response:
    response = session.get(API_URL + path, params=params, headers=_headers(), timeout=TIMEOUT)
    if _token_expired(response) and _retry_count < 1:
        refresh_token()
        return http_get(path, params, _retry_count + 1)
    return response


def http_post(path: str, json: Any = None, _retry_count: int = 0) -> requests.Response:
    response = session.post(API_URL + path, json=json, headers=_headers(), timeout=TIMEOUT)
    if _token_expired(response) and _retry_count < 1:
        refresh_token()
        return http_post(path, json, _retry_count + 1)
    return response


def http_put(path: str, json: Any = None, _retry_count: int = 0) -> requests.Response:
    response = session.put(API_URL + path, json=json, headers=_headers(), timeout=TIMEOUT)
    if _token_expired(response) and _retry_count < 1:
        refresh_token()
        return http_put(path, json, _retry_count + 1)
    return response
