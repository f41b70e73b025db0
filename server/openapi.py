"""The service's OpenAPI document, made to tell the truth about what the app-wide machinery answers (schemathesis
against the real service checks it: tests/server/test_schemathesis.py). Routes declare their own errors
(`responses=server.errors.responses(...)`); this adds what every route gets from the app rather than from itself:

- the API key as a security requirement (HTTP bearer, or the `X-API-Key` header) on every route off `public_paths`,
  with its 401; none when the service runs without keys (then no route answers 401);
- on routes with a body: 400 (malformed JSON) and 413 (body over `max_body_bytes`, refused before it is read);
- on every route but the health ones: 503 while draining (server/middleware.py DrainMiddleware);
- 422 with our error body (FastAPI documents its own `{"detail": [...]}` shape, which the service never sends).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from server.errors import ErrorResponse, responses
from server.middleware import HEALTH_PATHS

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


_COMPONENTS: dict[str, type[BaseModel]] = {"ErrorResponse": ErrorResponse}


def component(model: type[BaseModel]) -> dict:
    """A `$ref` to `model` in the document's components, for schemas no route's own models reach (stream chunks)."""
    _COMPONENTS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _error_ref() -> dict:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def build_openapi(app: FastAPI, public_paths: list[str], secured: bool) -> dict:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, model in _COMPONENTS.items():
        sub = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for def_name, definition in sub.pop("$defs", {}).items():
            schemas.setdefault(def_name, definition)
        schemas.setdefault(name, sub)
    schemas.pop("HTTPValidationError", None)  # FastAPI's 422 shape: never sent (ours is ErrorResponse)
    schemas.pop("ValidationError", None)
    if secured:
        components["securitySchemes"] = SECURITY_SCHEMES
    why = {status: entry["description"] for status, entry in responses(400, 401, 413, 422, 503).items()}
    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            answers = op.setdefault("responses", {})
            extra = [422] if "422" in answers else []
            if "requestBody" in op:
                extra += [400, 413, 422]
            if secured and path not in public_paths:
                op["security"] = [{"bearer": []}, {"apiKey": []}]
                extra.append(401)
            if path not in HEALTH_PATHS:
                extra.append(503)
            for status in extra:
                entry = answers.setdefault(str(status), {"description": why[status]})
                if status == 422 or "content" not in entry:
                    entry.update(_error_ref())
    return schema


def install(app: FastAPI, public_paths: list[str], secured: bool) -> None:
    """`app.openapi()` returns (and caches) the document above."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, public_paths, secured)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
