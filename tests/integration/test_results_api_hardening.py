"""The read API's edges: the jobs:read scope, loopback by default, pages bounded in bytes,
and no input (token, cursor, date, limit, path) that answers a 5xx or hangs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.results.app import ResultsService
from services.results.settings import ResultsSettings
from shared.auth import issue_token
from shared.http import PROBLEM_CONTENT_TYPE
from tests.integration.results_kit import (
    T0,
    Reader,
    caught_up,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PAGE_BYTES = 4096


@pytest.fixture
async def service(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    settings = settings_for(
        kafka_bootstrap,
        topic_prefix,
        database_url,
        auth_secret,
        results_max_page_bytes=PAGE_BYTES,
    )
    async with running(settings) as svc:
        yield svc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def test_the_read_api_binds_loopback_unless_told_otherwise() -> None:
    assert ResultsSettings(streamjobs_auth_secret="s" * 32).results_host == "127.0.0.1"
    told = ResultsSettings(streamjobs_auth_secret="s" * 32, results_host="0.0.0.0")
    assert told.results_host == "0.0.0.0"


async def test_a_token_without_jobs_read_gets_403_problem_json_on_every_read(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    await publish_script(producer, topic_prefix, job_script("mine", user="wally"))
    await wait_for(lambda: caught_up(service), message="job not written")
    base = f"http://127.0.0.1:{service.port}"
    writer = Reader(http, base, auth_secret, "wally", "jobs:write")
    for path in ("/jobs", "/jobs/mine", "/jobs/mine/result", "/jobs/mine/stream", "/analytics"):
        async with http.get(f"{base}/api/v1{path}", headers=writer.headers) as resp:
            assert resp.status == 403, path
            assert resp.content_type == PROBLEM_CONTENT_TYPE
            body = await resp.json(content_type=None)
        assert body["status"] == 403
        assert "jobs:read" in body["detail"]
    # The same user with the scope reads the job; an admin needs no other scope.
    status, _ = await Reader(http, base, auth_secret, "wally", "jobs:read").get("/jobs/mine")
    assert status == 200
    status, _ = await Reader(http, base, auth_secret, "root", "admin").get("/jobs/mine")
    assert status == 200


async def test_list_pages_stop_at_the_byte_bound_and_the_cursor_gives_the_rest(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    big = {"notes": "x" * 1500}  # each listed item is a little over 1.5 kB
    scripts = [
        job_script(f"j{i:02d}", metadata=big, submitted_at=T0 + timedelta(seconds=i))
        for i in range(9)
    ]
    for script in scripts:
        await publish_script(producer, topic_prefix, script)
    await wait_for(lambda: caught_up(service), message="jobs not written")
    alice = Reader(http, f"http://127.0.0.1:{service.port}", auth_secret, "alice")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        status, body = await alice.get("/jobs", **params)
        assert status == 200, body
        pages += 1
        assert 1 <= len(body["items"]) <= 2  # under the 200-item limit: the bytes stopped it
        assert len(json.dumps(body["items"])) <= PAGE_BYTES
        seen.extend(j["job_id"] for j in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 20, "paging never ended"
    assert seen == [f"j{i:02d}" for i in reversed(range(9))]


# ---- fuzz: whatever arrives, the answer is a 4xx problem or a success, never a 5xx ----

ROUTES = ("/jobs", "/jobs/{id}", "/jobs/{id}/result", "/jobs/{id}/stream", "/analytics")
PARAMS = (
    "cursor",
    "limit",
    "since",
    "until",
    "status",
    "priority",
    "job_type",
    "user_id",
    "group_by",
    "bucket",
)
ANY_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\ud800\udfff"),
    max_size=40,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# Requests stay within aiohttp's 8190-byte line limit (beyond it aiohttp itself answers 400,
# checked apart below): deep enough for RecursionError, long enough to be absurd.
JSONISH = st.one_of(
    st.integers(1, 2000).map(_deep),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
        max_leaves=8,
    ).map(lambda v: json.dumps(v)),
    st.tuples(ANY_TEXT, ANY_TEXT).map(lambda t: json.dumps(list(t))),
)
CURSORS = st.one_of(
    JSONISH.map(lambda text: _b64(text.encode("utf-8", "surrogatepass"))),
    ANY_TEXT,
    st.integers(1000, 5000).map(lambda n: "A" * n),
)
DATES = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01",
            "9999-12-31T23:59:59.999999",
            "2026-13-45",
            "+275760-09-13",
        ]
    ),
    ANY_TEXT,
)
LIMITS = st.one_of(
    st.integers().map(str),
    st.just("9" * 5000),
    st.sampled_from(["١٢", "1e3", " 5 ", "0x10", "-0"]),
)
VALUES = {"cursor": CURSORS, "since": DATES, "until": DATES, "limit": LIMITS}


@st.composite
def queries(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = draw(st.lists(st.sampled_from(PARAMS) | ANY_TEXT, max_size=4))
    return [(name, draw(VALUES.get(name, ANY_TEXT))) for name in names]


def _enc(text: str) -> str:
    # Percent-encode every byte, so NULs, lone surrogates (as invalid UTF-8) and slashes travel.
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _signed(secret: str, payload: str) -> str:
    body = _b64(payload.encode("utf-8", "surrogatepass"))
    sig = _b64(hmac.new(secret.encode(), f"sj1.{body}".encode(), hashlib.sha256).digest())
    return f"sj1.{body}.{sig}"


# What HTTP allows in a header value (visible ASCII, space, tab, obs-text): anything else
# aiohttp's parser refuses before any of our code runs.
HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def tokens(secret: str) -> st.SearchStrategy[str | None]:
    good = issue_token(secret, "alice", ("jobs:read",))
    return st.one_of(
        st.just(f"Bearer {good}"),
        st.just(f"Bearer {issue_token(secret, 'root', ('admin',))}"),
        st.none(),
        # Correctly signed, but a payload no verifier expects.
        JSONISH.map(lambda p: f"Bearer {_signed(secret, p)}"),
        st.text(HEADER_CHARS, max_size=60).map(lambda t: f"Bearer {t}"),
        st.integers(1000, 6000).map(lambda n: "Bearer sj1." + "é" * n + ".x"),
        st.text(HEADER_CHARS, max_size=30),
    )


def _request(port: int, path: str, authorization: str | None) -> tuple[int, str, bytes]:
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        if authorization is not None:
            conn.putheader("Authorization", authorization.encode("latin-1"))
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def fuzz(port: int, secret: str) -> None:
    @given(
        route=st.sampled_from(ROUTES),
        job_id=ANY_TEXT | st.just("j00"),
        query=queries(),
        authorization=tokens(secret),
    )
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(
        route: str, job_id: str, query: list[tuple[str, str]], authorization: str | None
    ) -> None:
        path = "/api/v1" + route.replace("{id}", _enc(job_id) or "x")
        if query:
            path += "?" + "&".join(f"{_enc(k)}={_enc(v)}" for k, v in query)
        assume(len(path) < 8000)  # aiohttp's request-line limit; beyond it, see below
        status, content_type, body = _request(port, path, authorization)
        assert status < 500, (path, authorization, body[:300])
        if status >= 400:
            assert content_type.startswith(PROBLEM_CONTENT_TYPE), (path, status, body[:300])
            assert json.loads(body)["status"] == status

    check()


# The service's own clients (aiokafka's jitter) use `random` on the other thread meanwhile.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_no_input_gives_a_5xx_or_hangs(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    auth_secret: str,
) -> None:
    await publish_script(producer, topic_prefix, job_script("j00", user="alice"))
    await wait_for(lambda: caught_up(service), message="job not written")
    # The service runs on this loop; the blocking fuzzer beside it.
    await asyncio.wait_for(asyncio.to_thread(fuzz, service.port, auth_secret), timeout=100)
    # Past aiohttp's 8190-byte header line the server refuses the request itself (a plain
    # 400, before our code runs): still a client error, never a 5xx or a hang.
    huge = "Bearer sj1." + "A" * 10_000
    status, _, _ = await asyncio.to_thread(_request, service.port, "/api/v1/jobs", huge)
    assert status == 400
