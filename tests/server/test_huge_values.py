"""Every number a client sends has a bound, and a huge value is a 422 naming its field, never a 500 (issue 22.2).

Before: `/v1/search` with `"lookahead": ` and 4,300 nines answered `500 internal_error` (the search-budget message hit
Python's int-to-string digit limit), and 1e308 passed every float field without an upper bound. The fields are
found by walking the service's own /openapi.json (request bodies and query parameters, nested objects included),
so a field added later without a bound fails `test_every_number_a_client_sends_is_bounded`; each one found is then
sent 4,300 nines, their negative, 1e308 and -1e308 over real HTTP (main_server: uvicorn, Redis, API keys)."""

from __future__ import annotations

import json

import pytest

HUGE = ["9" * 4300, "-" + "9" * 4300, "1e308", "-1e308"]
Q = "What is 2+3?"
BASE = {  # a valid body per operation (no policy is loaded: valid search bodies answer 503 "policy")
    "/v1/score": {"question": Q, "steps": ["2+3 = 5", "Answer: 5"]},
    "/v1/rerank": {"question": Q, "candidates": ["2+3 = 5\n\nAnswer: 5"]},
    "/v1/search": {"question": Q},
    "/v1/best-of-n": {"question": Q},
    "/v1/chat/completions": {"model": "tr", "messages": [{"role": "user", "content": Q}]},
    "/v1/openrlhf/reward": {"query": ["x"]},
    "/pooling": {"model": "tr", "input": "2+3 = 5"},
    "/classify": {"model": "tr", "input": "2+3 = 5"},
}


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _numbers(doc: dict, schema: dict, path: str, seen: frozenset = frozenset()):
    """(path, schema) of every integer or number inside `schema`; arrays are walked as `path[0]`."""
    ref = schema.get("$ref")
    if ref in seen:
        return
    seen = seen | {ref} if ref else seen
    schema = _resolve(doc, schema)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from _numbers(doc, sub, path, seen)
    if schema.get("type") in ("integer", "number"):
        yield path, schema
    if "items" in schema and isinstance(schema["items"], dict):
        yield from _numbers(doc, schema["items"], f"{path}[0]", seen)
    for name, sub in schema.get("properties", {}).items():
        yield from _numbers(doc, sub, f"{path}.{name}" if path else name, seen)


@pytest.fixture(scope="module")
def numeric_fields(client) -> list[tuple[str, str, str, dict]]:
    """(operation path, where: body | query, field path, its schema) for every number a client sends."""
    doc = client.get("/openapi.json").json()
    found = []
    for op_path, ops in doc["paths"].items():
        for op in ops.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                found += [(op_path, "body", p, s) for p, s in _numbers(doc, body, "")]
            for param in op.get("parameters", []):
                found += [(op_path, "query", p, s) for p, s in _numbers(doc, param["schema"], param["name"])]
    return found


def test_every_number_a_client_sends_is_bounded(numeric_fields):
    assert len(numeric_fields) >= 15, numeric_fields  # the walk reaches the search and chat knobs
    unbounded = [f"{op} {where} {path}" for op, where, path, s in numeric_fields
                 if "maximum" not in s and "exclusiveMaximum" not in s]
    unfloored = [f"{op} {where} {path}" for op, where, path, s in numeric_fields
                 if "minimum" not in s and "exclusiveMinimum" not in s]
    assert not unbounded, f"numbers without an upper bound: {unbounded}"
    assert not unfloored, f"numbers without a lower bound: {unfloored}"


def _with_raw(body: dict, path: str, raw: str) -> bytes:
    """`body` with `raw` (JSON number text, possibly beyond any float or int a JSON library writes) at `path`."""
    body = json.loads(json.dumps(body))
    node, parts = body, path.replace("[0]", ".0").split(".")
    for part in parts[:-1]:
        key = int(part) if part.isdigit() else part
        if isinstance(node, list):
            node = node[key]
        else:
            node = node.setdefault(key, {} if not parts[parts.index(part) + 1].isdigit() else [{}])
    node[parts[-1]] = "__HUGE__"
    return json.dumps(body).replace('"__HUGE__"', raw).encode()


def test_huge_numbers_are_422_naming_the_field(client, numeric_fields):
    tried = []
    for op, where, path, _ in numeric_fields:
        if op not in BASE or "[0]" in path:  # token-id lists (/pooling input): bounded above, sent by schemathesis
            continue
        for raw in HUGE:
            if where == "query":
                r = client.post(op, params={path: raw}, json=BASE[op])
            else:
                r = client.post(op, content=_with_raw(BASE[op], path, raw), headers={"content-type": "application/json"})
            tried.append((op, path, raw[:6], r.status_code))
            assert r.status_code == 422, (op, path, raw[:8], r.status_code, r.text[:300])
            named = f"query.{path}" if where == "query" else path  # the error mapper's name for a query parameter
            assert r.json()["error"]["param"] == named, (op, path, r.json())
    assert len(tried) >= 60, tried
