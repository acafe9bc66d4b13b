"""The web pages the edge serves: the built bundle under ``edge/static``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Browsers keep the files but ask whether they changed (a 304 when not): a rebuilt page is
#: never shown with a stale bundle beside it.
_CACHE = {"Cache-Control": "no-cache"}


async def _index(request: web.Request) -> web.StreamResponse:
    pages = sorted(path.name for path in STATIC_DIR.glob("*.html")) if STATIC_DIR.is_dir() else []
    if "index.html" in pages:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_CACHE)
    links = "".join(f'<li><a href="/{name}">{name}</a></li>' for name in pages)
    return web.Response(text=f"<!doctype html><ul>{links}</ul>\n", content_type="text/html")


def add_page_routes(app: web.Application) -> None:
    """Serves ``/`` and every built file of ``edge/static`` by name."""
    app.router.add_get("/", _index)
    if STATIC_DIR.is_dir():
        for path in sorted(STATIC_DIR.iterdir()):
            if path.is_file():
                app.router.add_get(f"/{path.name}", _file_handler(path))


def _file_handler(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers=_CACHE)

    return handler
