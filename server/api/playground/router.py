"""The playground's page and its two assets, read from server/playground/static (no build step, nothing from a
CDN: the page's Content-Security-Policy allows this origin only). The paths are on the default `public_paths`;
every API call the page makes carries the key typed into it, so the page honours the API's auth."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.errors import APIError

STATIC = Path(__file__).resolve().parents[2] / "playground" / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["playground"])


@router.get("/playground", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/playground/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the request ever reaches the file system
        raise APIError(404, f"no playground asset {name!r}", "path")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
