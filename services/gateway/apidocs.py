"""The API's description, served: the OpenAPI document and a Swagger UI reading it.

Swagger UI's assets are vendored under swagger_ui/ (swagger-ui-dist, Apache-2.0) and served
from this package, never from a CDN; the page starts it from a script of its own, so its
Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.api import API_PREFIX
from shared.http import Reply, Route, public_get

HERE = Path(__file__).parent / "swagger_ui"
DOCS = f"{API_PREFIX}/docs"
OPENAPI = f"{API_PREFIX}/openapi.json"
# Swagger UI draws its icons from data: URIs in its stylesheet; nothing else but this origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "docs.js": "text/javascript",
}


class ApiDocs:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = json.dumps(document).encode()
        page = (HERE / "docs.html").read_text()
        self.page = page.replace("__DOCS__", DOCS).replace("__OPENAPI__", OPENAPI).encode()
        self.assets = {name: (HERE / name).read_bytes() for name in ASSETS}
        self.headers = {"Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP}

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(body=self.document, content_type="application/json")

    async def html(self, _: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", headers=self.headers)

    def _asset(self, name: str) -> web.Response:
        return web.Response(body=self.assets[name], content_type=ASSETS[name], headers=self.headers)

    async def bundle(self, _: web.Request) -> web.Response:
        return self._asset("swagger-ui-bundle.js")

    async def styles(self, _: web.Request) -> web.Response:
        return self._asset("swagger-ui.css")

    async def starter(self, _: web.Request) -> web.Response:
        return self._asset("docs.js")


def _asset(name: str, operation_id: str, what: str, handler: Any) -> Route[ApiDocs]:
    reply = Reply(200, what, media=ASSETS[name])
    return public_get(
        f"{DOCS}/{name}", handler, operation_id, f"The API docs' {what}", reply, "docs"
    )


DOCS_ROUTES: tuple[Route[ApiDocs], ...] = (
    public_get(
        OPENAPI,
        ApiDocs.openapi,
        "getOpenApi",
        "This document",
        Reply(200, "OpenAPI 3.1", schema={"type": "object"}),
    ),
    public_get(
        DOCS,
        ApiDocs.html,
        "apiDocs",
        "This document, to read and try out in a browser (Swagger UI)",
        Reply(200, "an HTML page", media="text/html"),
        "docs",
    ),
    _asset("swagger-ui-bundle.js", "apiDocsScript", "Swagger UI script", ApiDocs.bundle),
    _asset("swagger-ui.css", "apiDocsStyles", "Swagger UI styles", ApiDocs.styles),
    _asset("docs.js", "apiDocsStarter", "script that starts Swagger UI", ApiDocs.starter),
)
