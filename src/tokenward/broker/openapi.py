"""The broker's OpenAPI document, made exact for this configuration.

FastAPI describes a credential name as "a string"; this broker knows which names exist. Every
path parameter and body field that names a credential (`name`, `credential`) gets an `enum` of
the configured names, so that clients (and fuzzers such as schemathesis) know the valid values,
Each operation also lists every status the broker's guard
and error handlers can answer with (`broker.errors.described`), whatever the route declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .errors import described

__all__ = ["exact_openapi"]

#: Parameters and fields that name a configured credential.
_CREDENTIAL_FIELDS = frozenset({"name", "credential"})
#: What the guard answers on any authenticated route before it runs.
_GUARD_STATUSES = (400, 401, 403, 413, 429, 500)


def exact_openapi(app: FastAPI, credentials: Iterable[str], public: Callable[[str], bool]) -> None:
    """Replace `app.openapi` with one that returns the exact document (built once)."""
    names = sorted(credentials)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            _narrow(schema, names, public)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _narrow(schema: dict[str, Any], names: list[str], public: Callable[[str], bool]) -> None:
    guard = {str(code): value for code, value in described(*_GUARD_STATUSES).items()}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                _narrow_parameter(parameter, names)
            responses = operation.setdefault("responses", {})
            if not public(path) and "default" not in responses:
                for code, value in guard.items():
                    responses.setdefault(code, _error_response(value))
    for model in schema.get("components", {}).get("schemas", {}).values():
        for field, spec in model.get("properties", {}).items():
            if field in _CREDENTIAL_FIELDS and spec.get("type") == "string" and names:
                spec["enum"] = names


def _narrow_parameter(parameter: dict[str, Any], names: list[str]) -> None:
    spec = parameter.setdefault("schema", {})
    if parameter.get("in") != "path" or spec.get("type") != "string":
        return
    if parameter["name"] in _CREDENTIAL_FIELDS and names:
        spec["enum"] = names


def _error_response(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": value["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }
