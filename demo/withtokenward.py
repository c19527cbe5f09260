"""The same pipeline helpers as `handmade.py`, with tokenward doing the refreshing (the demo's
"after" code): a user changes these few lines and keeps the rest of the pipeline.

- The tokens stay in the same `.env` variables (`DotenvStore`), so whatever else reads the file
  keeps working; tokenward adds one state line (version, expiry) and rewrites the file
  atomically under a lock, committing each rotated refresh token before anyone uses it.
- `refresh_token()`, the cooldown, `_retry_count` and the globals are gone: `TokenAuth` sends a
  valid token, refreshes once per expiry across every thread and process of the pipeline (a
  lease in `.env.leases`), and replays a request once if the API still says its token expired.

`LEASE_TTL` (30 s by default) is how long a refresh may hold the lease before another process
may take over (a process killed mid-refresh); the demo scales it to its short tokens.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from dotenv import dotenv_values

from tokenward import ExpiryRule, RefreshTokenGrant, TokenManager
from tokenward.integrations.requests import TokenAuth
from tokenward.stores.dotenv import DotenvStore

ENV_FILE = ".env"
LEASE_TTL = float(os.environ.get("LEASE_TTL", "30"))  # seconds
TIMEOUT = 10
USER_AGENT = f"orders-pipeline/{os.getpid()}"

_env = dotenv_values(ENV_FILE)
API_URL = _env.get("API_URL") or ""

manager = TokenManager(
    "orders",
    RefreshTokenGrant(
        _env.get("TOKEN_URL") or "",
        _env.get("CLIENT_ID") or "",
        _env.get("CLIENT_SECRET") or "",
        client_auth="body",
        extra_headers={"User-Agent": USER_AGENT},
    ),
    DotenvStore(
        ENV_FILE, {"orders": {"access_token": "ACCESS_TOKEN", "refresh_token": "REFRESH_TOKEN"}}
    ),
    expiry_rule=ExpiryRule(body_contains=("invalid_token", "expired")),
    lease_ttl=LEASE_TTL,
)
session = requests.Session()
session.headers["User-Agent"] = USER_AGENT
session.auth = TokenAuth(manager)


def http_get(path: str, params: Any = None) -> requests.Response:
    return session.get(API_URL + path, params=params, timeout=TIMEOUT)


def http_post(path: str, json: Any = None) -> requests.Response:
    return session.post(API_URL + path, json=json, timeout=TIMEOUT)


def http_put(path: str, json: Any = None) -> requests.Response:
    return session.put(API_URL + path, json=json, timeout=TIMEOUT)
