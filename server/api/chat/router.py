from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.chat.protocol import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from server.api.chat.serving import serve_chat
from server.deps import StateDep
from server.errors import ref, responses, sse_event
from server.openapi import component

router = APIRouter(tags=["chat"])
# `stream: true`: OpenAI's chunks as `data:` lines (an error after the 200 is an `{"error": ...}` line), then [DONE]
STREAM = {"text/event-stream": {"schema": {"anyOf": [
    sse_event(None, {"anyOf": [component(ChatCompletionChunk), ref("ErrorResponse")]}), sse_event(None, {"const": "[DONE]"})]}}}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses={200: {"content": STREAM}, **responses(400, 404, 413, 422, 429, 499, 503, 504)})
async def chat_completions(req: ChatCompletionRequest, request: Request, state: StateDep):
    """OpenAI-compatible chat completion whose answer is chosen by a PRM-guided search (`search` in the body);
    `stream: true` answers with chat.completion.chunk server-sent events."""
    return await serve_chat(state, req, request)
