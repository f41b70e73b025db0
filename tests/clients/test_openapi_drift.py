"""The SDK's models against the service's own /openapi.json (fetched from the live service): a field added, removed,
retyped or made optional on either side fails here, so the SDK cannot drift from the server unnoticed.

Responses: each SDK model is paired with its server schema and compared property by property (names, JSON types with
nullability, enum values, nested models recursively); the SDK may require only what the server always sends.
Requests: each method's keyword parameters must be exactly the request schema's properties (less the ones a method
does not expose on purpose, listed below with the reason). Stream events (not in the schema) are compared with the
library's dataclasses they are serialised from."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from repirl_client import Client, types

# server schema name -> SDK model
RESPONSES = {
    "ScoreResponse": types.ScoreResponse, "ScoreResult": types.ScoreResult,
    "server__api__score__protocol__Usage": types.ScoreUsage,
    "RerankResponse": types.RerankResponse, "RerankResult": types.RerankResult, "Selection": types.RerankSelection,
    "SearchResponse": types.SearchResponse, "CandidateOut": types.SearchCandidate,
    "ModelList": types.ModelList, "ModelCard": types.ModelCard,
    "ChatCompletionResponse": types.ChatCompletion, "Choice": types.ChatChoice,
    "ResponseMessage": types.ChatResponseMessage, "server__api__chat__protocol__Usage": types.ChatUsage,
    "SearchInfo": types.SearchInfo, "ErrorResponse": types.ErrorResponse, "ErrorDetail": types.ErrorDetail,
    "PoolingResponse": types.PoolingResponse, "PoolingResponseData": types.PoolingResponseData,
    "ClassificationResponse": types.ClassificationResponse, "ClassificationData": types.ClassificationData,
    "UsageInfo": types.PoolingUsage,
}
# the path each top-level response model is served on (checked: the schema really answers with it)
ROUTES = {("/v1/score", "post"): "ScoreResponse", ("/v1/rerank", "post"): "RerankResponse",
          ("/v1/search", "post"): "SearchResponse", ("/v1/best-of-n", "post"): "SearchResponse",
          ("/v1/models", "get"): "ModelList", ("/v1/chat/completions", "post"): "ChatCompletionResponse",
          ("/pooling", "post"): "PoolingResponse", ("/classify", "post"): "ClassificationResponse"}
# method -> (request schema, parameters the method leaves out on purpose)
REQUESTS = {
    "score": ("ScoreRequest", set()),
    "rerank": ("RerankRequest", set()),
    "search": ("SearchRequest", set()),
    # fixed / meaningless for best-of-n (the particle and adaptive knobs belong to other strategies)
    "best_of_n": ("BestOfNRequest", {"strategy", "beam_width", "lookahead", "particle_temperature", "resampling",
                                     "ess_threshold", "sweeps", "reference_particles", "round_size", "settle"}),
    "chat": ("ChatCompletionRequest", set()),
    "pooling": ("PoolingRequest", set()),
    # repirl's /classify takes /pooling's fields; vLLM's classify request has none of these, nor does the method
    "classify": ("ClassificationRequest", {"encoding_format", "embed_dtype", "endianness", "task", "dimensions"}),
}
TRANSPORT_PARAMS = {"self", "extra_body", "extra_headers", "timeout"}


@pytest.fixture(scope="module")
def schema(client):
    r = client._client.get(client.base_url + "/openapi.json", headers=client.default_headers)
    assert r.status_code == 200
    return r.json()


def sig(s: dict, rename: dict) -> object:
    """A comparable JSON type: refs by (SDK) model name, unions as sets, enums by their values."""
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[1]
        return ("ref", rename.get(name, name))
    if "anyOf" in s or "oneOf" in s:
        out = set()
        for sub in s.get("anyOf") or s["oneOf"]:
            x = sig(sub, rename)
            out |= x if isinstance(x, frozenset) else {x}
        return frozenset(out)
    if "const" in s:
        return ("enum", frozenset([s["const"]]))
    if "enum" in s:
        return ("enum", frozenset(s["enum"]))
    t = s.get("type")
    if t == "array":
        return ("array", sig(s.get("items", {}), rename))
    if t == "object" or (t is None and "additionalProperties" in s):
        extra = s.get("additionalProperties")
        return ("dict", sig(extra, rename) if isinstance(extra, dict) else "any")
    return (t or "any",)


def sdk_schemas():
    out = {}
    for model in set(RESPONSES.values()):
        js = model.model_json_schema(ref_template="#/$defs/{model}")
        out[model.__name__] = js
        out.update({k: v for k, v in js.get("$defs", {}).items()})
    return out


def test_every_response_model_matches_the_server(schema):
    server = schema["components"]["schemas"]
    rename = {name: model.__name__ for name, model in RESPONSES.items()}
    mine = sdk_schemas()
    for (path, method), name in ROUTES.items():
        ref = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + name), (path, ref)
    unpaired = {n for n in server if n.endswith(("Response", "Result", "Card", "List"))} - set(RESPONSES) - {
        "OpenRLHFRewardResponse"}  # for OpenRLHF's client
    assert not unpaired, f"server response schemas without an SDK model: {unpaired}"
    problems = []
    for server_name, model in RESPONSES.items():
        s, m = server[server_name], mine[model.__name__]
        sp, mp = s.get("properties", {}), m.get("properties", {})
        if set(sp) != set(mp):
            problems.append(f"{server_name}: only on the server {set(sp) - set(mp)}, "
                            f"only in the SDK {set(mp) - set(sp)}")
            continue
        extra_required = set(m.get("required", [])) - set(s.get("required", []))
        if extra_required:
            problems.append(f"{model.__name__} requires {extra_required}, which the server may leave out")
        for field in sp:
            a, b = sig(sp[field], rename), sig(mp[field], {})
            if a != b:
                problems.append(f"{server_name}.{field}: server {a} != SDK {b}")
    assert not problems, "\n".join(problems)


def test_every_method_takes_exactly_the_request_fields(schema):
    server = schema["components"]["schemas"]
    problems = []
    for method, (name, left_out) in REQUESTS.items():
        fields = set(server[name]["properties"])
        params = set(inspect.signature(getattr(Client, method)).parameters) - TRANSPORT_PARAMS
        if params != fields - left_out:
            problems.append(f"Client.{method}: missing {fields - left_out - params}, unknown to the server "
                            f"{params - fields}")
        assert left_out <= fields, f"{method}: {left_out - fields} are not request fields any more"
    assert not problems, "\n".join(problems)


def test_literal_values_match_the_server_enums(schema):
    server = schema["components"]["schemas"]

    def enum(schema_name, field):
        s = server[schema_name]["properties"][field]
        for sub in s.get("anyOf", [s]):
            if "enum" in sub:
                return set(sub["enum"])
        raise AssertionError(f"{schema_name}.{field} has no enum")

    assert set(typing.get_args(types.Aggregation)) == enum("ScoreRequest", "aggregation")
    assert set(typing.get_args(types.Strategy)) == enum("SearchRequest", "strategy")
    assert set(typing.get_args(types.Select)) == enum("SearchRequest", "select")
    assert set(typing.get_args(types.Voting)) == enum("RerankRequest", "voting")


def test_stream_event_models_match_the_library():
    from repirl.search.types import Candidate, SearchEvent

    assert set(types.TreeCandidate.model_fields) == {f.name for f in dataclasses.fields(Candidate)}
    event_fields = {f.name for f in dataclasses.fields(SearchEvent)} - {"kind"}  # kind becomes the SSE event name
    assert set(types.SearchStepEvent.model_fields) - {"type"} == event_fields
