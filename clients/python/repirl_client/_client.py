"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods over one base (repirl_client/_base.py).

    from repirl_client import Client
    with Client(base_url="http://localhost:8000", api_key="KEY") as client:
        r = client.score(question="Start with 3. Add 4.", steps=["3+4=7", "Answer: 7"])
        print(r.data[0].score, r.request_id)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

import httpx

from repirl_client._base import (DEFAULT_LIMITS, DEFAULT_MAX_RETRIES, MAX_RETRY_AFTER, NOT_GIVEN, BaseClient,
                                 CandidateLike, NotGiven, RequestSpec, ScoreItemLike, TimeoutLike)
from repirl_client._exceptions import APIConnectionError, APITimeoutError
from repirl_client._streaming import AsyncChatStream, AsyncSearchStream, ChatStream, SearchStream
from repirl_client.types import (AggregateInput, Aggregation, ChatCompletion, ChatMessage, ClassificationResponse,
                                 EncodingFormat, Health, ModelList, PoolingResponse, RerankResponse, ScoreResponse,
                                 SearchResponse, Resampling, Select, Strategy, Voting)

__all__ = ["Client", "AsyncClient"]

MessageLike = Union[ChatMessage, Mapping[str, Any]]
# vLLM's completion-form `input`: a text, texts, token ids, or lists of token ids
PoolingInput = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]]]


def _search_kwargs(question, strategy, n, beam_width, max_steps, select, aggregation, temperature, top_p,
                   max_step_tokens, seed, lookahead, dedup, vote_temperature, model, policy, return_candidates,
                   aggregate_input=None, **knobs):
    return dict(question=question, strategy=strategy, n=n, beam_width=beam_width, max_steps=max_steps, select=select,
                aggregation=aggregation, temperature=temperature, top_p=top_p, max_step_tokens=max_step_tokens,
                seed=seed, lookahead=lookahead, dedup=dedup, vote_temperature=vote_temperature, model=model,
                policy=policy, return_candidates=return_candidates, aggregate_input=aggregate_input, **knobs)


def _pooling_kwargs(input, messages, model, use_activation, add_special_tokens, add_generation_prompt,
                    continue_final_message, chat_template, chat_template_kwargs, truncate_prompt_tokens, **knobs):
    return dict(input=input, messages=messages, model=model, use_activation=use_activation,
                add_special_tokens=add_special_tokens, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, chat_template=chat_template,
                chat_template_kwargs=chat_template_kwargs, truncate_prompt_tokens=truncate_prompt_tokens, **knobs)


class Client(BaseClient):
    """A blocking client with a connection pool. Thread-safe; close it (or use `with`) when done.

    api_key: `Authorization: Bearer` key; default `REPIRL_API_KEY` (none: no header, for services without keys).
    base_url: default `REPIRL_BASE_URL`, else http://127.0.0.1:8000 (a trailing /v1 is accepted).
    timeout: seconds or an `httpx.Timeout` (default 180 s, 5 s to connect); max_retries: default 2.
    """

    _client: httpx.Client

    def __init__(self, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Optional[Mapping[str, str]] = None, max_retry_after: float = MAX_RETRY_AFTER,
                 http_client: Optional[httpx.Client] = None):
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                         default_headers=default_headers, max_retry_after=max_retry_after)
        self._client = http_client or httpx.Client(limits=DEFAULT_LIMITS, timeout=self.timeout)

    # ---- transport
    def _request(self, spec: RequestSpec, *, extra_headers: Optional[Mapping[str, str]] = None,
                 timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN, max_retries: Optional[int] = None):
        retries = self.max_retries if max_retries is None else max_retries
        for retries_taken in range(retries + 1):
            remaining = retries - retries_taken
            request = self._build_request(spec, extra_headers, timeout)
            try:
                response = self._client.send(request, stream=spec.stream_cls is not None)
            except httpx.TimeoutException as e:
                if remaining > 0:
                    time.sleep(self._retry_delay(retries_taken, None))
                    continue
                raise APITimeoutError(request) from e
            except httpx.TransportError as e:
                if remaining > 0:
                    time.sleep(self._retry_delay(retries_taken, None))
                    continue
                raise APIConnectionError(message=f"Connection error: {e}", request=request) from e
            if response.status_code >= 400 and response.status_code not in spec.ok_statuses:
                if remaining > 0 and self._should_retry(response):
                    response.close()
                    time.sleep(self._retry_delay(retries_taken, response.headers))
                    continue
                response.read()
                response.close()
                raise self._status_error(response)
            if spec.stream_cls is not None:
                return spec.stream_cls(response)
            try:
                return self._parse(spec, response)
            finally:
                response.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection pool (a `with_options` copy leaves it to the original)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- endpoints
    def score(self, *, question: Optional[str] = None, steps: Optional[Sequence[str]] = None,
              items: Optional[Iterable[ScoreItemLike]] = None, model: Optional[str] = None,
              aggregation: Optional[Aggregation] = None, return_token_rewards: bool = False,
              aggregate_input: Optional[AggregateInput] = None,
              extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
              timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ScoreResponse:
        """POST /v1/score: per-step rewards and the aggregate for one trajectory (`question` + `steps`) or a batch
        (`items`: dicts with question/steps, or (question, steps) pairs)."""
        spec = self._score_spec(question, steps, items, model, aggregation, return_token_rewards, extra_body,
                               aggregate_input)
        return self._request(spec, extra_headers=extra_headers, timeout=timeout)

    def rerank(self, *, question: str, candidates: Iterable[CandidateLike], model: Optional[str] = None,
               aggregation: Optional[Aggregation] = None, voting: Optional[Voting] = None,
               vote_temperature: Optional[float] = None, top_n: Optional[int] = None, extra_body: Optional[Dict[str, Any]] = None,
               extra_headers: Optional[Mapping[str, str]] = None,
               timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> RerankResponse:
        """POST /v1/rerank: rank candidate solutions (texts split at the PRM's separator, or lists of steps)."""
        spec = self._rerank_spec(question, candidates, model, aggregation, voting, vote_temperature, top_n,
                                 extra_body)
        return self._request(spec, extra_headers=extra_headers, timeout=timeout)

    def search(self, *, question: str, strategy: Optional[Strategy] = None, n: Optional[int] = None,
               beam_width: Optional[int] = None, max_steps: Optional[int] = None, select: Optional[Select] = None,
               aggregation: Optional[Aggregation] = None, temperature: Optional[float] = None,
               top_p: Optional[float] = None, max_step_tokens: Optional[int] = None, seed: Optional[int] = None,
               lookahead: Optional[int] = None, dedup: Optional[bool] = None,
               vote_temperature: Optional[float] = None, model: Optional[str] = None, policy: Optional[str] = None,
               return_candidates: Optional[bool] = None, aggregate_input: Optional[AggregateInput] = None,
               particle_temperature: Optional[float] = None, resampling: Optional[Resampling] = None,
               ess_threshold: Optional[float] = None, sweeps: Optional[int] = None,
               reference_particles: Optional[int] = None, round_size: Optional[int] = None,
               settle: Optional[float] = None, budget: Optional[Dict[str, Any]] = None, stream: bool = False,
               extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
               timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Union[SearchResponse, SearchStream]:
        """POST /v1/search (best-of-n | adaptive-best-of-n | beam | dvts | particle-filtering | particle-gibbs with the
        policy and a PRM; `budget`: {"policy_tokens", "prm_tokens", "seconds"}). `stream=True` returns a
        `SearchStream`: iterate it for `SearchStepEvent`s and the final `SearchResultEvent`."""
        params = _search_kwargs(question, strategy, n, beam_width, max_steps, select, aggregation, temperature, top_p,
                                max_step_tokens, seed, lookahead, dedup, vote_temperature, model, policy,
                                return_candidates, aggregate_input, particle_temperature=particle_temperature,
                                resampling=resampling, ess_threshold=ess_threshold, sweeps=sweeps,
                                reference_particles=reference_particles, round_size=round_size, settle=settle,
                                budget=budget)
        spec = self._search_spec("/v1/search", stream, params, extra_body, SearchStream)
        return self._request(spec, extra_headers=extra_headers, timeout=timeout)

    def best_of_n(self, *, question: str, n: Optional[int] = None, select: Optional[Select] = None,
                  aggregation: Optional[Aggregation] = None, temperature: Optional[float] = None,
                  top_p: Optional[float] = None, max_steps: Optional[int] = None,
                  max_step_tokens: Optional[int] = None, seed: Optional[int] = None, dedup: Optional[bool] = None,
                  vote_temperature: Optional[float] = None, model: Optional[str] = None,
                  policy: Optional[str] = None, return_candidates: Optional[bool] = None,
                  aggregate_input: Optional[AggregateInput] = None, budget: Optional[Dict[str, Any]] = None,
                  stream: bool = False,
                  extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                  timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Union[SearchResponse, SearchStream]:
        """POST /v1/best-of-n: sample n solutions, score them, pick one (naive | weighted | majority)."""
        params = _search_kwargs(question, None, n, None, max_steps, select, aggregation, temperature, top_p,
                                max_step_tokens, seed, None, dedup, vote_temperature, model, policy, return_candidates,
                                aggregate_input, budget=budget)
        spec = self._search_spec("/v1/best-of-n", stream, params, extra_body, SearchStream)
        return self._request(spec, extra_headers=extra_headers, timeout=timeout)

    def chat(self, *, messages: Sequence[MessageLike], model: str = "policy", search: Optional[Dict[str, Any]] = None,
             prm: Optional[str] = None, return_trace: Optional[bool] = None, temperature: Optional[float] = None,
             budget: Optional[Dict[str, Any]] = None,
             top_p: Optional[float] = None, max_tokens: Optional[int] = None,
             max_completion_tokens: Optional[int] = None, seed: Optional[int] = None, n: Optional[int] = None,
             stream: bool = False, stream_options: Optional[Dict[str, Any]] = None,
             extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
             timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Union[ChatCompletion, ChatStream]:
        """POST /v1/chat/completions with the search chosen in `search` (e.g. {"strategy": "beam", "n": 8}).
        `stream=True` returns a `ChatStream` of `ChatCompletionChunk`s."""
        params = dict(messages=messages, model=model, search=search, prm=prm, return_trace=return_trace,
                      budget=budget, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                      max_completion_tokens=max_completion_tokens, seed=seed, n=n, stream_options=stream_options)
        spec = self._chat_spec(params, stream, extra_body, ChatStream)
        return self._request(spec, extra_headers=extra_headers, timeout=timeout)

    def pooling(self, *, input: Optional[PoolingInput] = None, messages: Optional[Sequence[MessageLike]] = None,
                model: Optional[str] = None, task: Optional[str] = None, use_activation: Optional[bool] = None,
                encoding_format: Optional[EncodingFormat] = None, embed_dtype: Optional[str] = None,
                endianness: Optional[str] = None, add_special_tokens: Optional[bool] = None,
                add_generation_prompt: Optional[bool] = None, continue_final_message: Optional[bool] = None,
                chat_template: Optional[str] = None, chat_template_kwargs: Optional[Dict[str, Any]] = None,
                dimensions: Optional[int] = None, truncate_prompt_tokens: Optional[int] = None,
                extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> PoolingResponse:
        """POST /pooling, vLLM's pooling API (its request fields, its response): exactly one of `input` (text,
        texts, token ids or lists of them) and `messages` (rendered with the PRM's chat template). Rows per input:
        `[1 - p, p]` per step tag (step-tag PRMs, e.g. `<extra_0>` for Qwen2.5-Math-PRM) or `[value]` per token
        (token formats; `use_activation=True`: sigmoid). `task="classify"` gives /classify's probs instead.
        `dimensions` and `truncate_prompt_tokens` are vLLM's but not served (400 naming them)."""
        params = _pooling_kwargs(input, messages, model, use_activation, add_special_tokens, add_generation_prompt,
                                 continue_final_message, chat_template, chat_template_kwargs, truncate_prompt_tokens,
                                 task=task, encoding_format=encoding_format, embed_dtype=embed_dtype,
                                 endianness=endianness, dimensions=dimensions)
        return self._request(self._pooling_spec("/pooling", params, extra_body), extra_headers=extra_headers,
                             timeout=timeout)

    def classify(self, *, input: Optional[PoolingInput] = None, messages: Optional[Sequence[MessageLike]] = None,
                 model: Optional[str] = None, use_activation: Optional[bool] = None,
                 add_special_tokens: Optional[bool] = None, add_generation_prompt: Optional[bool] = None,
                 continue_final_message: Optional[bool] = None, chat_template: Optional[str] = None,
                 chat_template_kwargs: Optional[Dict[str, Any]] = None, truncate_prompt_tokens: Optional[int] = None,
                 extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                 timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ClassificationResponse:
        """POST /classify, vLLM's classification API: per input, `probs` from the PRM's score of the sequence (its
        default aggregation): `[1 - s, s]` for probability formats, `[s]` otherwise (`use_activation=True`:
        sigmoid). `model` may be the PRM's folder, as veRL's reward loop sends it."""
        params = _pooling_kwargs(input, messages, model, use_activation, add_special_tokens, add_generation_prompt,
                                 continue_final_message, chat_template, chat_template_kwargs, truncate_prompt_tokens)
        return self._request(self._pooling_spec("/classify", params, extra_body), extra_headers=extra_headers,
                             timeout=timeout)

    def models(self, *, extra_headers: Optional[Mapping[str, str]] = None,
               timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ModelList:
        """GET /v1/models: the PRMs (with format, revision, step separator) and the policy."""
        return self._request(self._models_spec(), extra_headers=extra_headers, timeout=timeout)

    def health(self, *, extra_headers: Optional[Mapping[str, str]] = None,
               timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Health:
        """GET /readyz: `Health(status="ready" | "unready" | "draining", engines=..., cache=...)`; an unready service is a
        result here, not an exception (and is not retried)."""
        return self._request(self._health_spec(), extra_headers=extra_headers, timeout=timeout)


class AsyncClient(BaseClient):
    """The asyncio client: the same methods as `Client`, awaited. Use one per event loop."""

    _client: httpx.AsyncClient

    def __init__(self, *, api_key: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Optional[Mapping[str, str]] = None, max_retry_after: float = MAX_RETRY_AFTER,
                 http_client: Optional[httpx.AsyncClient] = None):
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                         default_headers=default_headers, max_retry_after=max_retry_after)
        self._client = http_client or httpx.AsyncClient(limits=DEFAULT_LIMITS, timeout=self.timeout)

    async def _request(self, spec: RequestSpec, *, extra_headers: Optional[Mapping[str, str]] = None,
                       timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN, max_retries: Optional[int] = None):
        retries = self.max_retries if max_retries is None else max_retries
        for retries_taken in range(retries + 1):
            remaining = retries - retries_taken
            request = self._build_request(spec, extra_headers, timeout)
            try:
                response = await self._client.send(request, stream=spec.stream_cls is not None)
            except httpx.TimeoutException as e:
                if remaining > 0:
                    await asyncio.sleep(self._retry_delay(retries_taken, None))
                    continue
                raise APITimeoutError(request) from e
            except httpx.TransportError as e:
                if remaining > 0:
                    await asyncio.sleep(self._retry_delay(retries_taken, None))
                    continue
                raise APIConnectionError(message=f"Connection error: {e}", request=request) from e
            if response.status_code >= 400 and response.status_code not in spec.ok_statuses:
                if remaining > 0 and self._should_retry(response):
                    await response.aclose()
                    await asyncio.sleep(self._retry_delay(retries_taken, response.headers))
                    continue
                await response.aread()
                await response.aclose()
                raise self._status_error(response)
            if spec.stream_cls is not None:
                return spec.stream_cls(response)
            try:
                await response.aread()
                return self._parse(spec, response)
            finally:
                await response.aclose()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def score(self, *, question: Optional[str] = None, steps: Optional[Sequence[str]] = None,
                    items: Optional[Iterable[ScoreItemLike]] = None, model: Optional[str] = None,
                    aggregation: Optional[Aggregation] = None, return_token_rewards: bool = False,
                    aggregate_input: Optional[AggregateInput] = None,
                    extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                    timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ScoreResponse:
        spec = self._score_spec(question, steps, items, model, aggregation, return_token_rewards, extra_body,
                               aggregate_input)
        return await self._request(spec, extra_headers=extra_headers, timeout=timeout)

    async def rerank(self, *, question: str, candidates: Iterable[CandidateLike], model: Optional[str] = None,
                     aggregation: Optional[Aggregation] = None, voting: Optional[Voting] = None,
                     vote_temperature: Optional[float] = None, top_n: Optional[int] = None, extra_body: Optional[Dict[str, Any]] = None,
                     extra_headers: Optional[Mapping[str, str]] = None,
                     timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> RerankResponse:
        spec = self._rerank_spec(question, candidates, model, aggregation, voting, vote_temperature, top_n,
                                 extra_body)
        return await self._request(spec, extra_headers=extra_headers, timeout=timeout)

    async def search(self, *, question: str, strategy: Optional[Strategy] = None, n: Optional[int] = None,
                     beam_width: Optional[int] = None, max_steps: Optional[int] = None,
                     select: Optional[Select] = None, aggregation: Optional[Aggregation] = None,
                     temperature: Optional[float] = None, top_p: Optional[float] = None,
                     max_step_tokens: Optional[int] = None, seed: Optional[int] = None,
                     lookahead: Optional[int] = None, dedup: Optional[bool] = None,
                     vote_temperature: Optional[float] = None, model: Optional[str] = None,
                     policy: Optional[str] = None, return_candidates: Optional[bool] = None,
                     aggregate_input: Optional[AggregateInput] = None,
                     particle_temperature: Optional[float] = None, resampling: Optional[Resampling] = None,
                     ess_threshold: Optional[float] = None, sweeps: Optional[int] = None,
                     reference_particles: Optional[int] = None, round_size: Optional[int] = None,
                     settle: Optional[float] = None, budget: Optional[Dict[str, Any]] = None, stream: bool = False,
                     extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                     timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Union[SearchResponse, AsyncSearchStream]:
        """`stream=True` returns an `AsyncSearchStream`: `async for event in stream`."""
        params = _search_kwargs(question, strategy, n, beam_width, max_steps, select, aggregation, temperature, top_p,
                                max_step_tokens, seed, lookahead, dedup, vote_temperature, model, policy,
                                return_candidates, aggregate_input, particle_temperature=particle_temperature,
                                resampling=resampling, ess_threshold=ess_threshold, sweeps=sweeps,
                                reference_particles=reference_particles, round_size=round_size, settle=settle,
                                budget=budget)
        spec = self._search_spec("/v1/search", stream, params, extra_body, AsyncSearchStream)
        return await self._request(spec, extra_headers=extra_headers, timeout=timeout)

    async def best_of_n(self, *, question: str, n: Optional[int] = None, select: Optional[Select] = None,
                        aggregation: Optional[Aggregation] = None, temperature: Optional[float] = None,
                        top_p: Optional[float] = None, max_steps: Optional[int] = None,
                        max_step_tokens: Optional[int] = None, seed: Optional[int] = None,
                        dedup: Optional[bool] = None, vote_temperature: Optional[float] = None,
                        model: Optional[str] = None, policy: Optional[str] = None,
                        return_candidates: Optional[bool] = None,
                        aggregate_input: Optional[AggregateInput] = None, budget: Optional[Dict[str, Any]] = None,
                  stream: bool = False,
                        extra_body: Optional[Dict[str, Any]] = None,
                        extra_headers: Optional[Mapping[str, str]] = None,
                        timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN
                        ) -> Union[SearchResponse, AsyncSearchStream]:
        params = _search_kwargs(question, None, n, None, max_steps, select, aggregation, temperature, top_p,
                                max_step_tokens, seed, None, dedup, vote_temperature, model, policy, return_candidates,
                                aggregate_input, budget=budget)
        spec = self._search_spec("/v1/best-of-n", stream, params, extra_body, AsyncSearchStream)
        return await self._request(spec, extra_headers=extra_headers, timeout=timeout)

    async def chat(self, *, messages: Sequence[MessageLike], model: str = "policy",
                   search: Optional[Dict[str, Any]] = None, prm: Optional[str] = None,
                   return_trace: Optional[bool] = None, temperature: Optional[float] = None,
                   budget: Optional[Dict[str, Any]] = None,
                   top_p: Optional[float] = None, max_tokens: Optional[int] = None,
                   max_completion_tokens: Optional[int] = None, seed: Optional[int] = None, n: Optional[int] = None,
                   stream: bool = False, stream_options: Optional[Dict[str, Any]] = None,
                   extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                   timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Union[ChatCompletion, AsyncChatStream]:
        params = dict(messages=messages, model=model, search=search, prm=prm, return_trace=return_trace,
                      budget=budget, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                      max_completion_tokens=max_completion_tokens, seed=seed, n=n, stream_options=stream_options)
        spec = self._chat_spec(params, stream, extra_body, AsyncChatStream)
        return await self._request(spec, extra_headers=extra_headers, timeout=timeout)

    async def pooling(self, *, input: Optional[PoolingInput] = None,
                      messages: Optional[Sequence[MessageLike]] = None, model: Optional[str] = None,
                      task: Optional[str] = None, use_activation: Optional[bool] = None,
                      encoding_format: Optional[EncodingFormat] = None, embed_dtype: Optional[str] = None,
                      endianness: Optional[str] = None, add_special_tokens: Optional[bool] = None,
                      add_generation_prompt: Optional[bool] = None, continue_final_message: Optional[bool] = None,
                      chat_template: Optional[str] = None, chat_template_kwargs: Optional[Dict[str, Any]] = None,
                      dimensions: Optional[int] = None, truncate_prompt_tokens: Optional[int] = None,
                      extra_body: Optional[Dict[str, Any]] = None, extra_headers: Optional[Mapping[str, str]] = None,
                      timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> PoolingResponse:
        params = _pooling_kwargs(input, messages, model, use_activation, add_special_tokens, add_generation_prompt,
                                 continue_final_message, chat_template, chat_template_kwargs, truncate_prompt_tokens,
                                 task=task, encoding_format=encoding_format, embed_dtype=embed_dtype,
                                 endianness=endianness, dimensions=dimensions)
        return await self._request(self._pooling_spec("/pooling", params, extra_body), extra_headers=extra_headers,
                                   timeout=timeout)

    async def classify(self, *, input: Optional[PoolingInput] = None,
                       messages: Optional[Sequence[MessageLike]] = None, model: Optional[str] = None,
                       use_activation: Optional[bool] = None, add_special_tokens: Optional[bool] = None,
                       add_generation_prompt: Optional[bool] = None, continue_final_message: Optional[bool] = None,
                       chat_template: Optional[str] = None, chat_template_kwargs: Optional[Dict[str, Any]] = None,
                       truncate_prompt_tokens: Optional[int] = None, extra_body: Optional[Dict[str, Any]] = None,
                       extra_headers: Optional[Mapping[str, str]] = None,
                       timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ClassificationResponse:
        params = _pooling_kwargs(input, messages, model, use_activation, add_special_tokens, add_generation_prompt,
                                 continue_final_message, chat_template, chat_template_kwargs, truncate_prompt_tokens)
        return await self._request(self._pooling_spec("/classify", params, extra_body), extra_headers=extra_headers,
                                   timeout=timeout)

    async def models(self, *, extra_headers: Optional[Mapping[str, str]] = None,
                     timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> ModelList:
        return await self._request(self._models_spec(), extra_headers=extra_headers, timeout=timeout)

    async def health(self, *, extra_headers: Optional[Mapping[str, str]] = None,
                     timeout: Union[TimeoutLike, NotGiven] = NOT_GIVEN) -> Health:
        return await self._request(self._health_spec(), extra_headers=extra_headers, timeout=timeout)
