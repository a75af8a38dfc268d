"""The built-in dashboard page: served by the gateway, reading only documented API routes."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway.api import Api
from services.gateway.dashboard import render
from services.gateway.openapi import build_document
from shared.api import API_PREFIX
from tests.unit.test_gateway_api import client, kafka  # noqa: F401  (fixtures)


async def test_dashboard_is_served_as_html_without_a_token(
    client: tuple[TestClient[Any, Any], Api],  # noqa: F811
) -> None:
    http, _ = client
    resp = await http.get("/dashboard")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "streamjobs · live dashboard" in await resp.text()


def test_every_api_path_the_page_reads_is_a_documented_get_operation() -> None:
    page = render("ws://127.0.0.1:8082/ws").decode()
    called = set(re.findall(r"get\(`?\"?(/[a-z-]+)", page))
    assert called == {"/analytics", "/jobs"}, called
    documented = build_document()["paths"]
    for path in called:
        assert "get" in documented[API_PREFIX + path], path


def test_settings_are_embedded_as_script_literals_that_cannot_end_the_script() -> None:
    page = render('ws://x/ws"</script><script>alert(1)</script>').decode()
    assert "</script><script>alert(1)" not in page
    assert 'const WS_URL = "ws://x/ws\\"<\\/script>' in page
    assert f'const API = "{API_PREFIX}";' in page
