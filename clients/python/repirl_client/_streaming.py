"""Server-sent events: a small decoder (WHATWG rules: `event:`/`data:` fields, multi-line data, comments, a blank
line ends an event) and the typed streams the client returns. A search stream yields `SearchStepEvent`s, then the
`SearchResultEvent` and stops; an `event: error` raises the matching `APIStatusError`. A chat stream yields
`ChatCompletionChunk`s until `data: [DONE]`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Generic, Iterator, Optional, TypeVar

import httpx

from repirl_client._exceptions import STATUS_OF_TYPE, APIError, APIResponseValidationError, make_status_error
from repirl_client.types import ChatCompletionChunk, SearchEvent, SearchResponse, SearchResultEvent, SearchStepEvent

T = TypeVar("T")


@dataclass
class ServerSentEvent:
    event: Optional[str]
    data: str
    id: Optional[str] = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    def __init__(self) -> None:
        self._event: Optional[str] = None
        self._data: list[str] = []
        self._id: Optional[str] = None

    def decode(self, line: str) -> Optional[ServerSentEvent]:
        """Feed one line (without its newline); returns an event when the line completes one."""
        if not line:
            if self._event is None and not self._data:
                return None
            sse = ServerSentEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data = None, []
            return sse
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def flush(self) -> Optional[ServerSentEvent]:
        return self.decode("")


def _stream_error(response: httpx.Response, body: Any) -> APIError:
    err = body.get("error") if isinstance(body, dict) else None
    status = STATUS_OF_TYPE.get(err.get("type"), 500) if isinstance(err, dict) else 500
    return make_status_error(response, body, status=status)


def _parse(response: httpx.Response, model, data: Any):
    try:
        return model.model_validate(data)
    except Exception as e:  # pydantic.ValidationError: the stream carried something this client cannot read
        raise APIResponseValidationError(f"unexpected stream event: {e}", response, body=data) from e


class _SearchDecoder:
    """Turns SSEs of /v1/search into typed events (shared by the sync and async streams)."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.result: Optional[SearchResponse] = None

    def event(self, sse: ServerSentEvent) -> Optional[SearchEvent]:
        if not sse.data:
            return None
        data = sse.json()
        if sse.event == "error" or (isinstance(data, dict) and "error" in data and sse.event != "result"):
            raise _stream_error(self.response, data)
        if sse.event == "result":
            result = _parse(self.response, SearchResponse, data)
            result._request_id = self.response.headers.get("x-request-id")
            self.result = result
            return SearchResultEvent(result=result)
        if sse.event == "step":
            payload = {k: v for k, v in data.items() if k != "kind"} if isinstance(data, dict) else data
            return _parse(self.response, SearchStepEvent, payload)
        return None  # an event type this client does not know: skipped


class _ChatDecoder:
    def __init__(self, response: httpx.Response):
        self.response = response
        self.done = False

    def event(self, sse: ServerSentEvent) -> Optional[ChatCompletionChunk]:
        if not sse.data:
            return None
        if sse.data.strip() == "[DONE]":
            self.done = True
            return None
        data = sse.json()
        if isinstance(data, dict) and "error" in data:
            raise _stream_error(self.response, data)
        return _parse(self.response, ChatCompletionChunk, data)


class _BaseStream(Generic[T]):
    def __init__(self, response: httpx.Response, decoder):
        self.response = response
        self._decoder = decoder

    @property
    def request_id(self) -> Optional[str]:
        return self.response.headers.get("x-request-id")


class Stream(_BaseStream[T]):
    """A synchronous event stream; iterate it, or use it as a context manager to close it early."""

    def __iter__(self) -> Iterator[T]:
        decoder = SSEDecoder()
        try:
            for line in self.response.iter_lines():
                sse = decoder.decode(line)
                if sse is None:
                    continue
                item = self._decoder.event(sse)
                if item is not None:
                    yield item
                if self._finished():
                    return
            sse = decoder.flush()
            item = self._decoder.event(sse) if sse else None
            if item is not None:
                yield item
            if not self._finished():
                raise APIError("the stream ended before its last event", self.response.request)
        finally:
            self.close()

    def _finished(self) -> bool:
        return getattr(self._decoder, "result", None) is not None or getattr(self._decoder, "done", False)

    def close(self) -> None:
        self.response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncStream(_BaseStream[T]):
    async def __aiter__(self) -> AsyncIterator[T]:
        decoder = SSEDecoder()
        try:
            async for line in self.response.aiter_lines():
                sse = decoder.decode(line)
                if sse is None:
                    continue
                item = self._decoder.event(sse)
                if item is not None:
                    yield item
                if self._finished():
                    return
            sse = decoder.flush()
            item = self._decoder.event(sse) if sse else None
            if item is not None:
                yield item
            if not self._finished():
                raise APIError("the stream ended before its last event", self.response.request)
        finally:
            await self.close()

    def _finished(self) -> bool:
        return getattr(self._decoder, "result", None) is not None or getattr(self._decoder, "done", False)

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class SearchStream(Stream[SearchEvent]):
    """`for event in stream`: `SearchStepEvent` per step, then one `SearchResultEvent`; `.result` once seen."""

    def __init__(self, response: httpx.Response):
        super().__init__(response, _SearchDecoder(response))

    @property
    def result(self) -> Optional[SearchResponse]:
        return self._decoder.result

    def final_result(self) -> SearchResponse:
        """Consume the rest of the stream and return its result."""
        for _ in self:
            pass
        assert self._decoder.result is not None
        return self._decoder.result


class AsyncSearchStream(AsyncStream[SearchEvent]):
    def __init__(self, response: httpx.Response):
        super().__init__(response, _SearchDecoder(response))

    @property
    def result(self) -> Optional[SearchResponse]:
        return self._decoder.result

    async def final_result(self) -> SearchResponse:
        async for _ in self:
            pass
        assert self._decoder.result is not None
        return self._decoder.result


class ChatStream(Stream[ChatCompletionChunk]):
    def __init__(self, response: httpx.Response):
        super().__init__(response, _ChatDecoder(response))


class AsyncChatStream(AsyncStream[ChatCompletionChunk]):
    def __init__(self, response: httpx.Response):
        super().__init__(response, _ChatDecoder(response))
