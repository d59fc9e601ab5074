"""The browser demo: ``GET /`` (Uppy Dashboard + Tus) when ``server.demo`` is on.

``index.html`` and ``uppy.single.js`` (Uppy bundled with esbuild from ``web-src/``, CSS
inlined) are vendored files; nothing here needs Node at run time.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent
BUNDLE = "uppy.single.js"
#: Where the bundle is served (outside any tus base path).
BUNDLE_PATH = "/demo/" + BUNDLE


def page_relative(path: str) -> str:
    """``path`` (absolute on this server) as a URL relative to the page at ``/``.

    The page links to its script and endpoint relatively, so behind a proxy that mounts
    the daemon under a prefix (``/uploads/`` -> ``/``) the browser stays under it. Full
    URLs (``http://...``, ``//host/...``) are returned as they are."""
    if path.startswith("/") and not path.startswith("//"):
        return "./" + path[1:]
    return path


def add_demo_routes(app: web.Application, base_path: str) -> None:
    """``GET /`` (the page, pointed at ``base_path``) and ``GET /demo/uppy.single.js``.

    ``base_path`` is the tus endpoint: a path on this server, or a full URL (a page that
    uploads to another origin)."""
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{ENDPOINT}}", html.escape(page_relative(base_path), quote=True))
    page = page.replace("{{BUNDLE}}", html.escape(page_relative(BUNDLE_PATH), quote=True))
    bundle = (WEB_DIR / BUNDLE).read_bytes()
    security = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers=security)

    async def script(request: web.Request) -> web.Response:
        return web.Response(body=bundle, content_type="text/javascript", charset="utf-8",
                            headers=security)

    app.router.add_get("/", index)
    app.router.add_get(BUNDLE_PATH, script)
