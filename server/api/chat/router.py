from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from server.api.chat.serving import serve_chat
from server.deps import StateDep

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(req: ChatCompletionRequest, request: Request, state: StateDep):
    """OpenAI-compatible chat completion whose answer is chosen by a PRM-guided search (`search` in the body);
    `stream: true` answers with chat.completion.chunk server-sent events."""
    return await serve_chat(state, req, request)
