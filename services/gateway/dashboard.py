"""The built-in live dashboard: one static page that reads the public API in the browser.

The page holds no data of its own: it asks `/api/v1/analytics` and `/api/v1/jobs`
with the token the operator types in (an admin token shows every user) and
follows a chosen job over the notifier's WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from shared.api import API_PREFIX

PAGE = Path(__file__).with_name("dashboard.html")


def render(ws_url: str) -> bytes:
    """The page with this deployment's API prefix and WebSocket URL filled in."""
    html = PAGE.read_text()
    # As JSON literals: a setting's value cannot break out of the script.
    for name, value in (("__API_PREFIX__", API_PREFIX), ("__WS_URL__", ws_url)):
        html = html.replace(name, json.dumps(value).replace("</", "<\\/"))
    return html.encode()


def dashboard_handler(ws_url: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = render(ws_url)

    async def dashboard(_: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type="text/html",
            headers={"Cache-Control": "no-cache", "X-Frame-Options": "DENY"},
        )

    return dashboard
