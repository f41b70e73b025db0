"""What `Client` and `AsyncClient` share: configuration (arguments, then REPIRL_API_KEY / REPIRL_BASE_URL), request
building for every endpoint, the retry policy and response parsing. Only sending and sleeping differ between the two.

The retry policy is openai-python's (`_base_client.py`): connection errors, timeouts, 408, 409, 429 and 5xx are
retried, `max_retries` (2) times; the wait is the server's `Retry-After` (or `retry-after-ms`) when it is positive
and at most `max_retry_after` (60 s), else `0.5 s * 2**retries_taken`, capped at 8 s, minus a random 0-25% jitter.
A `Retry-After` longer than the cap is not waited for: the error is raised at once (its `retry_after` says how long
the service asked for). `x-should-retry: true|false` from the server overrides the status rule."""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

import httpx

from repirl_client._exceptions import APIResponseValidationError, APIStatusError, make_status_error
from repirl_client._version import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(180.0, connect=5.0)  # the service's own request_timeout_s is 120 s
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

TimeoutLike = Union[float, httpx.Timeout, None]


class NotGiven:
    """Marks an argument that was not passed (None is a value: timeout=None means no timeout)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()

ScoreItemLike = Union[Mapping[str, Any], Tuple[str, Sequence[str]]]
CandidateLike = Union[str, Sequence[str], Mapping[str, Any]]


@dataclass
class RequestSpec:
    method: str
    path: str
    body: Optional[Dict[str, Any]] = None
    cast: Optional[Type] = None  # a pydantic model for the JSON body
    stream_cls: Optional[Type] = None  # a stream class: the body is read as server-sent events
    ok_statuses: Tuple[int, ...] = ()  # non-2xx statuses that still carry a `cast` body (/readyz's 503)
    headers: Dict[str, str] = field(default_factory=dict)
    timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN


def _drop_unset(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and not isinstance(v, NotGiven)}


def normalize_items(items: Iterable[ScoreItemLike]) -> List[Dict[str, Any]]:
    out = []
    for it in items:
        if isinstance(it, Mapping):
            out.append({"question": it["question"], "steps": list(it["steps"])})
        else:
            question, steps = it
            out.append({"question": question, "steps": list(steps)})
    return out


def normalize_candidates(candidates: Iterable[CandidateLike]) -> List[Any]:
    out: List[Any] = []
    for c in candidates:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, Mapping):
            out.append({"steps": list(c["steps"])})
        else:
            out.append({"steps": list(c)})
    return out


def parse_retry_after(headers: Optional[httpx.Headers]) -> Optional[float]:
    """Seconds the server asks to wait: `retry-after-ms`, `Retry-After` as seconds (floats allowed) or as an HTTP
    date; None when absent or unreadable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class BaseClient:
    _client: Any  # httpx.Client | httpx.AsyncClient

    def __init__(self, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Optional[Mapping[str, str]] = None, max_retry_after: float = MAX_RETRY_AFTER):
        self.api_key = api_key if api_key is not None else os.environ.get("REPIRL_API_KEY") or None
        base = base_url or os.environ.get("REPIRL_BASE_URL") or DEFAULT_BASE_URL
        base = base.rstrip("/")
        if base.endswith("/v1"):  # OpenAI-style base URLs work too: our paths carry /v1 themselves
            base = base[:-3]
        self.base_url = base
        self.timeout: TimeoutLike = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else timeout
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be a non-negative integer (0 disables retries)")
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._default_headers = dict(default_headers or {})
        self._owns_client = True

    # ---- configuration
    @property
    def default_headers(self) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"repirl-client/{__version__}",
                   **self._default_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def with_options(self, *, timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN,
                     max_retries: Optional[int] = None, api_key: Optional[str] = None,
                     default_headers: Optional[Mapping[str, str]] = None):
        """A copy with other settings that shares this client's connection pool: `client.with_options(timeout=5,
        max_retries=0).score(...)`. Closing the copy leaves the pool open; close the original."""
        import copy

        other = copy.copy(self)
        other._owns_client = False
        if not isinstance(timeout, NotGiven):
            other.timeout = timeout
        if max_retries is not None:
            if not isinstance(max_retries, int) or max_retries < 0:
                raise ValueError("max_retries must be a non-negative integer (0 disables retries)")
            other.max_retries = max_retries
        if api_key is not None:
            other.api_key = api_key
        if default_headers is not None:
            other._default_headers = {**self._default_headers, **default_headers}
        return other

    # ---- retries (openai-python's policy, see the module docstring)
    def _should_retry(self, response: httpx.Response) -> bool:
        retry_after = parse_retry_after(response.headers)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > self.max_retry_after:
            return False
        explicit = response.headers.get("x-should-retry")
        if explicit in ("true", "false"):
            return explicit == "true"
        status = response.status_code
        return status in (408, 409, 429) or status >= 500

    def _retry_delay(self, retries_taken: int, headers: Optional[httpx.Headers]) -> float:
        retry_after = parse_retry_after(headers)
        if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= self.max_retry_after:
            return retry_after
        delay = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY)
        return max(0.0, delay * (1 - 0.25 * random.random()))

    # ---- requests and responses
    def _build_request(self, spec: RequestSpec, extra_headers: Optional[Mapping[str, str]],
                       timeout: Union[TimeoutLike, NotGiven]) -> httpx.Request:
        headers = {**self.default_headers, **spec.headers, **(extra_headers or {})}
        if spec.stream_cls is not None:
            headers["Accept"] = "text/event-stream"
        if isinstance(timeout, NotGiven):
            timeout = spec.timeout if not isinstance(spec.timeout, NotGiven) else self.timeout
        return self._client.build_request(spec.method, self.base_url + spec.path, json=spec.body, headers=headers,
                                          timeout=timeout)

    @staticmethod
    def _error_body(response: httpx.Response) -> Any:
        text = response.text
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _status_error(self, response: httpx.Response) -> APIStatusError:
        err = make_status_error(response, self._error_body(response))
        err.retry_after = parse_retry_after(response.headers)  # type: ignore[attr-defined]
        return err

    def _parse(self, spec: RequestSpec, response: httpx.Response):
        if spec.cast is None:
            return response
        try:
            data = response.json()
        except ValueError as e:
            if response.status_code in spec.ok_statuses:
                raise self._status_error(response) from None
            raise APIResponseValidationError(f"the response is not JSON: {response.text[:200]!r}", response) from e
        try:
            obj = spec.cast.model_validate(data)
        except Exception as e:  # pydantic.ValidationError
            if response.status_code in spec.ok_statuses:
                raise self._status_error(response) from None
            raise APIResponseValidationError(f"unexpected response body: {e}", response, body=data) from e
        obj._request_id = response.headers.get("x-request-id")
        return obj

    # ---- one RequestSpec per endpoint, shared by Client and AsyncClient
    @staticmethod
    def _score_spec(question, steps, items, model, aggregation, return_token_rewards, extra_body,
                    aggregate_input=None) -> RequestSpec:
        from repirl_client.types import ScoreResponse

        if items is not None and (question is not None or steps is not None):
            raise ValueError("give either question + steps, or items")
        if items is None and (question is None or steps is None):
            raise ValueError("give question + steps (one trajectory) or items (a batch)")
        body = _drop_unset({"model": model, "aggregation": aggregation,
                            "return_token_rewards": return_token_rewards or None, "aggregate_input": aggregate_input})
        if items is not None:
            body["items"] = normalize_items(items)
        else:
            body.update(question=question, steps=list(steps))
        return RequestSpec("POST", "/v1/score", {**body, **(extra_body or {})}, ScoreResponse)

    @staticmethod
    def _rerank_spec(question, candidates, model, aggregation, voting, vote_temperature, top_n,
                     extra_body) -> RequestSpec:
        from repirl_client.types import RerankResponse

        body = _drop_unset({"question": question, "candidates": normalize_candidates(candidates), "model": model,
                            "aggregation": aggregation, "voting": voting, "vote_temperature": vote_temperature,
                            "top_n": top_n})
        return RequestSpec("POST", "/v1/rerank", {**body, **(extra_body or {})}, RerankResponse)

    @staticmethod
    def _search_spec(path: str, stream: bool, params: Dict[str, Any], extra_body, stream_cls) -> RequestSpec:
        from repirl_client.types import SearchResponse

        body = {**_drop_unset(params), **(extra_body or {})}
        if stream:
            body["stream"] = True
            return RequestSpec("POST", path, body, SearchResponse, stream_cls=stream_cls)
        return RequestSpec("POST", path, body, SearchResponse)

    @staticmethod
    def _chat_spec(params: Dict[str, Any], stream: bool, extra_body, stream_cls) -> RequestSpec:
        from repirl_client.types import ChatCompletion

        params = dict(params)
        params["messages"] = [m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
                              for m in params["messages"]]
        body = {**_drop_unset(params), **(extra_body or {})}
        if stream:
            body["stream"] = True
            return RequestSpec("POST", "/v1/chat/completions", body, ChatCompletion, stream_cls=stream_cls)
        return RequestSpec("POST", "/v1/chat/completions", body, ChatCompletion)

    @staticmethod
    def _pooling_spec(path: str, params: Dict[str, Any], extra_body) -> RequestSpec:
        """/pooling and /classify: vLLM's request (one of `input` and `messages`), its response classes."""
        from repirl_client.types import ClassificationResponse, PoolingResponse

        if (params.get("input") is None) == (params.get("messages") is None):
            raise ValueError("give exactly one of input (text, texts, token ids or lists of them) and messages")
        params = dict(params)
        raw = params.get("input")
        if raw is not None and not isinstance(raw, str):  # tuples and other sequences travel as JSON lists
            params["input"] = [x if isinstance(x, (str, int)) else list(x) for x in raw]
        if params.get("messages") is not None:
            params["messages"] = [m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
                                  for m in params["messages"]]
        cast = PoolingResponse if path == "/pooling" else ClassificationResponse
        return RequestSpec("POST", path, {**_drop_unset(params), **(extra_body or {})}, cast)

    @staticmethod
    def _models_spec() -> RequestSpec:
        from repirl_client.types import ModelList

        return RequestSpec("GET", "/v1/models", None, ModelList)

    @staticmethod
    def _health_spec() -> RequestSpec:
        from repirl_client.types import Health

        return RequestSpec("GET", "/readyz", None, Health, ok_statuses=(503,))
