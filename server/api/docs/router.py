"""/openapi.json and /docs as ordinary routes, so the app's API-key dependency covers them (FastAPI's built-in
schema routes bypass app dependencies: with keys set they had to be switched off, leaving clients no schema).
`openapi_docs: false` in the settings leaves them out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="repirl")
