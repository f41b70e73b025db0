"""The x-request-id middleware (server/middleware.py) on paths the live service does not reach: an unhandled error
(Starlette's outermost handler would answer 500 without our headers) and a response that set its own id."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.app import create_app
from server.settings import Settings

router = APIRouter()


@router.get("/boom")
async def boom():
    raise RuntimeError("kaboom")


@router.get("/own-id")
async def own_id():
    return JSONResponse({"ok": True}, headers={"x-request-id": "from-route"})


def test_request_id_on_500_and_single_header():
    app = create_app(Settings(prm=[]), scorers={}, policies={}, extra_routers=[router])

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        # a loopback name: the keyless default Host allowlist refuses others
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return await c.get("/boom"), await c.get("/own-id", headers={"X-Request-Id": "abc-1"}), \
                await c.get("/own-id", headers={"X-Request-Id": "bad id\twith tab"})

    boom, echoed, replaced = asyncio.run(go())
    assert boom.status_code == 500 and boom.json()["error"]["type"] == "internal_error"
    assert boom.headers["x-request-id"].startswith("req_")
    assert echoed.headers.get_list("x-request-id") == ["abc-1"]  # the route's own id is replaced, not doubled
    rid = replaced.headers.get_list("x-request-id")
    assert len(rid) == 1 and rid[0].startswith("req_")
