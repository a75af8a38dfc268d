"""The built-in live dashboard: one static page that reads the public API in the browser.

The page holds no data of its own: it asks `/api/v1/analytics` and `/api/v1/jobs`
with the token the operator types in (an admin token shows every user) and
follows a chosen job over the notifier's WebSocket. Its script and styles are served
as assets of their own, so its Content-Security-Policy allows no inline code at all.
"""

from __future__ import annotations

import html
from importlib.resources import files

from aiohttp import web
from yarl import URL

from shared.api import API_PREFIX
from shared.http import Reply, Route, public_get

# Package data of `services.gateway`, beside this module in a checkout and in the wheel.
HERE = files("services.gateway")
PAGE = HERE / "dashboard.html"
# Each asset: its file beside this module, its media type, its operation id.
ASSETS = {
    "/dashboard.js": ("dashboard.js", "text/javascript", "dashboardJs"),
    "/dashboard.css": ("dashboard.css", "text/css", "dashboardCss"),
    # The charts: uPlot, vendored unchanged (static/uplot/README.md).
    "/dashboard/uplot.js": (
        "static/uplot/uPlot.iife.min.js",
        "text/javascript",
        "dashboardUplotJs",
    ),
    "/dashboard/uplot.css": ("static/uplot/uPlot.min.css", "text/css", "dashboardUplotCss"),
}
# Every response that is not the dashboard: nothing may load, frame or run it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def render(ws_url: str) -> bytes:
    """The page with this deployment's API prefix and WebSocket URL filled in."""
    page = PAGE.read_text()
    # As attribute values, escaped: a setting's value cannot break out of its tag.
    for name, value in (("__API_PREFIX__", API_PREFIX), ("__WS_URL__", ws_url)):
        page = page.replace(name, html.escape(value, quote=True))
    return page.encode()


def _ws_origin(ws_url: str) -> str | None:
    """The WebSocket URL's origin for `connect-src`, if it is a plain ws/wss URL."""
    try:
        url = URL(ws_url)
    except ValueError:
        return None
    if url.scheme not in ("ws", "wss") or not url.host:
        return None
    origin = str(url.origin())
    # A policy is a list of tokens: nothing in a setting may end one or start another.
    return origin if not any(c in origin for c in " ;,'\"\r\n\t") else None


def dashboard_csp(ws_url: str) -> str:
    connect = " ".join(filter(None, ("'self'", _ws_origin(ws_url))))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        f" connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class Dashboard:
    """The page and its assets, each with the dashboard's policy."""

    def __init__(self, ws_url: str) -> None:
        self.headers = {
            "Cache-Control": "no-cache",
            "Content-Security-Policy": dashboard_csp(ws_url),
            "X-Frame-Options": "DENY",
        }
        self.page = render(ws_url)
        self.assets = {
            path: (HERE.joinpath(*name.split("/")).read_bytes(), media)
            for path, (name, media, _) in ASSETS.items()
        }

    def _serve(self, body: bytes, content_type: str) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=self.headers)

    async def html(self, _: web.Request) -> web.Response:
        return self._serve(self.page, "text/html")

    async def asset(self, request: web.Request) -> web.Response:
        resource = request.match_info.route.resource
        assert resource is not None  # a route of the table, so a resource of its own
        return self._serve(*self.assets[resource.canonical])


def _asset(path: str, what: str) -> Route[Dashboard]:
    _, media, operation_id = ASSETS[path]
    reply = Reply(200, what, media=media)
    return public_get(path, Dashboard.asset, operation_id, f"The dashboard's {what}", reply, "ops")


DASHBOARD_ROUTES: tuple[Route[Dashboard], ...] = (
    public_get(
        "/dashboard",
        Dashboard.html,
        "dashboard",
        "The live dashboard: a page that reads this API with the token given",
        Reply(200, "an HTML page", media="text/html"),
        "ops",
    ),
    _asset("/dashboard.js", "script"),
    _asset("/dashboard.css", "styles"),
    _asset("/dashboard/uplot.js", "chart library (uPlot)"),
    _asset("/dashboard/uplot.css", "chart library's styles (uPlot)"),
)


async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
    """On every response, problems and streams included: no sniffing, no framing."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
