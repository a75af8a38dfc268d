"""The API docs page: Swagger UI served from the gateway's own package, reading the served
document, under a policy that allows no inline script and nothing from another origin."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway.handlers import Gateway
from tests.unit.test_gateway_api import client, kafka  # noqa: F401  (fixtures)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self.openapi: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self._in_script = tag == "script"
        for name in ("src", "href"):
            if found.get(name):
                self.refs.append(str(found[name]))
        if found.get("data-openapi-url"):
            self.openapi.append(str(found["data-openapi-url"]))
        assert not any(name.startswith("on") or name == "style" for name in found), tag

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def policy(header: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


async def test_the_docs_page_and_every_asset_it_loads_are_served_by_the_gateway(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    resp = await http.get("/api/v1/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = Page()
    page.feed(await resp.text())
    assert page.inline == [], "no inline script"
    assert page.openapi == ["/api/v1/openapi.json"]
    assert len(page.refs) == 3
    for ref in page.refs:
        assert ref.startswith("/api/v1/docs/"), "nothing from another origin"
        asset = await http.get(ref)
        assert asset.status == 200, ref
        assert asset.content_type in ("text/javascript", "text/css"), ref
        assert len(await asset.read()) > 100, ref
    document = await http.get(page.openapi[0])
    assert (await document.json())["paths"]["/api/v1/docs"]


async def test_the_docs_page_runs_under_a_strict_policy(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    for path in ("/api/v1/docs", "/api/v1/docs/swagger-ui-bundle.js", "/api/v1/docs/docs.js"):
        resp = await http.get(path)
        rules = policy(resp.headers["Content-Security-Policy"])
        assert rules["default-src"] == "'none'"
        assert rules["script-src"] == "'self'", "no inline or eval'd script"
        assert rules["style-src"] == "'self'"
        assert rules["connect-src"] == "'self'"
        assert rules["frame-ancestors"] == "'none'"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
