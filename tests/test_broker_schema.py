"""Schemathesis against the broker's own OpenAPI document (`/openapi.json`).

Real uvicorn in front of the provider emulator; every operation gets a bounded number of
generated requests (`MAX_EXAMPLES`, valid ones and invalid ones mixed) carrying a valid client
key with a wide policy, so that they get past authentication. Each answer must not be a server
error (5xx) and must conform to the document: a status code it declares, the declared content
type and the declared body schema.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from broker_support import API_KEY_ENV, CLIENT_SECRET_ENV, BrokerServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tokenward.broker.app import PROXY_METHODS, create_app
from tokenward.broker.config import hash_key, new_key
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer

#: Per operation; `make fuzz` runs many more (TOKENWARD_FUZZ_EXAMPLES).
MAX_EXAMPLES = int(os.environ.get("TOKENWARD_FUZZ_EXAMPLES", "25"))
pytestmark = [
    pytest.mark.timeout(120 + MAX_EXAMPLES * 5),
    pytest.mark.e2e,
]  # e2e: its module fixture runs the emulator and the broker
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
KEY = new_key()


def _config(tmp: Path, emulator_url: str) -> Path:
    text = f"""
[store]
url = "sqlite://{tmp}/tokens.db"

[credentials.api]
grant = "refresh_token"
base_url = "{emulator_url}/api"
token_url = "{emulator_url}/oauth/token"
client_id = "{TEST_CLIENT_ID}"
client_secret = "env:{CLIENT_SECRET_ENV}"

[credentials.avatar]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"

# The same provider with base_url one level down, so that a session call's path is one
# segment (schemathesis percent-encodes the slashes of a path parameter).
[credentials.avatar_v1]
preset = "heygen"
base_url = "{emulator_url}/v1"
token_url = "{emulator_url}/v1/streaming.create_token"
api_key = "env:{API_KEY_ENV}"
session_new = "/streaming.new"
session_start = "/streaming.start"
session_keep_alive = "/streaming.keep_alive"
session_stop = "/streaming.stop"
session_api_key_calls = ["/streaming.stop"]

[broker.limits]
upstream_timeout = 5.0
session_idle_timeout = 60.0
reap_interval = 0.5
auth_failure_burst = 1000000

[broker.clients.fuzz]
key_sha256 = "{hash_key(KEY)}"
credentials = ["*"]
methods = ["*"]
paths = ["/*"]
raw_tokens = true
admin = true
max_sessions = 1000
rate = 100000
burst = 100000
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    emulator = Emulator()
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    emulator.add_api_key(TEST_API_KEY)
    emu_server = EmulatorServer(emulator).start()
    path = _config(tmp_path_factory.mktemp("schema"), emu_server.url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
        mp.setenv(API_KEY_ENV, TEST_API_KEY)
        app = create_app(path)
        server = BrokerServer(app).start()
        app.state.broker.credentials["api"].manager.seed(
            refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID)
        )
        try:
            yield server
        finally:
            server.stop()
            emu_server.stop()


def _overrides(broker: BrokerServer, headers: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Besides fully generated requests, requests on names that exist (so the fuzzing reaches
    past the 404s): the configured credentials, sessions opened beforehand."""
    with httpx2.Client(base_url=broker.url, headers=headers, timeout=10) as http:
        opened = [
            http.post("/v1/sessions", json={"credential": "avatar"}).json()["session_id"]
            for _ in range(4)
        ]
        bound = [  # sessions only the session-bound proxy uses (never deleted by the fuzzing)
            http.post("/v1/sessions", json={"credential": "avatar_v1"}).json()["session_id"]
            for _ in range(2)
        ]
    names = [{"path_parameters": {"name": n}} for n in ("api", "avatar")]
    sessions = [{"path_parameters": {"session_id": i}} for i in opened]
    proxied = [{"path_parameters": {"credential": n}} for n in ("api", "avatar")]
    proxied += [{"path_parameters": {"credential": "api", "path": p}} for p in ("me", "items")]
    found: dict[str, list[dict[str, Any]]] = {
        "POST /v1/credentials/{name}/refresh": names,
        "POST /v1/credentials/{name}/token": names,
        "POST /v1/sessions": [{"body": {"credential": n}} for n in ("api", "avatar")],
        "POST /v1/sessions/{session_id}/keepalive": sessions,
        "DELETE /v1/sessions/{session_id}": sessions,
    }
    found.update({f"{m} /v1/proxy/{{credential}}/{{path}}": proxied for m in PROXY_METHODS})
    calls = [{"path_parameters": {"session_id": i, "path": "streaming.keep_alive"}} for i in bound]
    found.update({f"{m} /v1/sessions/{{session_id}}/proxy/{{path}}": calls for m in PROXY_METHODS})
    return found


def _fuzz(strategy: Any, headers: dict[str, str], statuses: collections.Counter[int]) -> Any:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)
        statuses[response.status_code] += 1

    return run


def test_broker_conforms_to_its_openapi_document(broker: BrokerServer) -> None:
    """Every operation, `MAX_EXAMPLES` generated requests each; all failures reported at once."""
    loaded = schemathesis.openapi.from_url(f"{broker.url}/openapi.json")
    headers = {"Authorization": f"Bearer {KEY}"}
    overrides = _overrides(broker, headers)
    failures: dict[str, str] = {}
    seen: dict[str, collections.Counter[int]] = {}
    for result in loaded.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        label = operation.label
        strategies = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
        strategies += [operation.as_strategy(**o) for o in overrides.get(label, [])]
        statuses = seen.setdefault(label, collections.Counter())
        run = _fuzz(st.one_of(strategies), headers, statuses)
        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis groups its failures
            failures[label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert len(seen) >= 10, "the OpenAPI document lost its operations"
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
    # The key got the requests past authentication: every operation answered with success.
    # (The emulator's session calls are POST-only: the session-bound proxy's other methods
    # reach it and get its 405, passed on as it is.)
    missed = [
        label
        for label, statuses in seen.items()
        if not any(c < 300 for c in statuses)
        and not (
            label.endswith("/proxy/{path}") and "/v1/sessions/" in label and "POST" not in label
        )
    ]
    assert not missed, f"no successful answer from {missed}: {seen}"


def test_the_document_names_the_configured_credentials_and_every_status(
    broker: BrokerServer,
) -> None:
    """Credential names are enums of the configured ones (a fuzzer generates real names), and
    every authenticated operation declares the guard's statuses in the error shape."""
    document = httpx2.get(f"{broker.url}/openapi.json", timeout=10).json()
    names = ["api", "avatar", "avatar_v1"]
    body = document["components"]["schemas"]["SessionIn"]["properties"]["credential"]
    assert body["enum"] == names
    checked = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in ("name", "credential"):
                    assert parameter["schema"]["enum"] == names, (path, parameter)
            if path.startswith("/v1/") and "default" not in operation["responses"]:
                for status in ("400", "401", "403", "413", "429", "500"):
                    answer = operation["responses"][status]
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, status)
                checked += 1
    assert checked >= 6
