"""The built-in dashboard page: served by the gateway, reading only documented API routes,
under a strict Content-Security-Policy, its token kept for the tab only."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway.dashboard import HERE, dashboard_csp, render
from services.gateway.handlers import Gateway
from services.gateway.routes import build_document
from shared.api import API_PREFIX
from tests.unit.test_gateway_api import client, kafka  # noqa: F401  (fixtures)

SCRIPT = (HERE / "dashboard.js").read_text()


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []  # text inside <script> or <style>
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.inline.append(data)


def parsed(ws_url: str = "ws://127.0.0.1:8082/ws") -> Tags:
    tags = Tags()
    tags.feed(render(ws_url).decode())
    return tags


async def test_dashboard_is_served_as_html_without_a_token(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    resp = await http.get("/dashboard")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "streamjobs · live dashboard" in await resp.text()


async def test_the_page_and_its_assets_carry_a_strict_policy_and_no_sniffing(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    for path, content_type in (
        ("/dashboard", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
        ("/dashboard/uplot.js", "text/javascript"),
        ("/dashboard/uplot.css", "text/css"),
    ):
        resp = await http.get(path)
        assert resp.status == 200 and resp.content_type == content_type, path
        policy = dict(
            part.strip().split(" ", 1)
            for part in resp.headers["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'", "no inline or eval'd script"
        assert policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["connect-src"] == "'self'", "no WebSocket URL is set here"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_api_answers_and_problems_forbid_framing_and_sniffing(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    for path in ("/api/v1/job-types", "/api/v1/nothing", "/api/v1/jobs", "/healthz"):
        resp = await http.get(path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        policy = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, path


def test_the_page_has_no_inline_script_style_or_handlers() -> None:
    tags = parsed()
    assert tags.inline == []
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts == [{"src": "/dashboard/uplot.js"}, {"src": "/dashboard.js"}]
    for tag, attrs in tags.tags:
        assert not any(name.startswith("on") or name == "style" for name in attrs), tag


def test_the_token_is_kept_for_the_tab_only_and_logout_clears_it() -> None:
    page = render("ws://x/ws").decode()
    for text in (page, SCRIPT, (HERE / "dashboard.css").read_text()):
        assert "localStorage" not in text
    assert "sessionStorage.setItem(TOKEN_KEY" in SCRIPT
    assert ("button", {"id": "logout", "type": "button"}) in parsed().tags
    logout = SCRIPT[SCRIPT.index('$("logout").addEventListener') :]
    logout = logout[: logout.index("\n});") + 4]
    assert "sessionStorage.removeItem(TOKEN_KEY)" in logout
    assert 'tokenInput.value = ""' in logout


def test_every_api_path_the_page_reads_is_a_documented_get_operation() -> None:
    called = set(re.findall(r"get\(`?\"?(/[a-z/-]+)", SCRIPT))
    called |= set(re.findall(r'API \+ "(/[a-z/-]+)"', SCRIPT))
    assert called == {"/analytics", "/analytics/series", "/jobs", "/instances"}, called
    documented = build_document()["paths"]
    for path in called:
        assert "get" in documented[API_PREFIX + path], path


def test_settings_are_escaped_attribute_values_that_cannot_end_the_tag() -> None:
    hostile = 'ws://x/ws"><script>alert(1)</script>'
    tags = parsed(hostile)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts == [{"src": "/dashboard/uplot.js"}, {"src": "/dashboard.js"}]
    meta = {a["name"]: a["content"] for t, a in tags.tags if t == "meta" and "name" in a}
    assert meta["streamjobs-ws"] == hostile
    assert meta["streamjobs-api"] == API_PREFIX
    assert "connect-src 'self' ws://127.0.0.1:8082;" in dashboard_csp("ws://127.0.0.1:8082/ws")
    # Nor can it widen the policy: a value that is not a plain ws origin is left out.
    assert dashboard_csp("ws://a b; script-src *").count("script-src") == 1
    assert "connect-src 'self';" in dashboard_csp("javascript:alert(1)")


async def test_the_vendored_chart_library_is_served_as_it_was_packed(
    client: tuple[TestClient[Any, Any], Gateway],  # noqa: F811
) -> None:
    http, _ = client
    resp = await http.get("/dashboard/uplot.js")
    body = await resp.read()
    assert body == (HERE / "static" / "uplot" / "uPlot.iife.min.js").read_bytes()
    assert body.startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert b"new Function" not in body and b"eval(" not in body  # script-src 'self' holds


def test_the_retry_button_posts_to_the_jobs_retry_route() -> None:
    assert "post(`/jobs/${encodeURIComponent(jobId)}/retry`)" in SCRIPT
    assert 'method: "POST"' in SCRIPT
