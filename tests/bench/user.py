"""Latency a user sees: jobs submitted at once through the REST gateway, each followed over a
WebSocket, against the same streams read straight from the simulator in the same run.

The direct streams go first, alone, then the pipeline's; both ask the simulator for the
same prompts, so the simulator's schedule (time to first token, then one token per
interval) is the same for both. See `tests.bench.lag` for what is computed.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import aiohttp
from websockets.asyncio.client import connect

from tests.bench.figures import Figure, percentile
from tests.bench.lag import (
    DirectStream,
    UserStream,
    added_first_token,
    first_token_parts,
    token_lags,
)

MODEL = "gpt-4o-mini"
# The added time to first token, split where the job's records say (the parts' p50s need
# not sum to the whole's).
PARTS = (
    ("submit to 202", "the gateway: admission, its transaction, the answer"),
    ("202 to the slot given", "the job's command fetched from Kafka, its dispatch"),
    (
        "slot to the streamer's first chunk",
        "the upstream request and the first token's flush, minus the direct reader's time to"
        " first token",
    ),
    ("first chunk to the client", "the chunk's Kafka hop, the notifier, the WebSocket"),
)
FINAL = frozenset({"job.completed", "job.failed", "job.cancelled"})
TOKEN_LINE = b'"delta":{"content":'  # a token event; the role event has "role" first


def prompt(i: int, tokens: int) -> str:
    return f"user latency {i} [[sim tokens={tokens}]]"


async def direct_stream(
    http: aiohttp.ClientSession, base_url: str, i: int, tokens: int
) -> DirectStream:
    """Read one stream's raw SSE lines: the cheapest reader, so its receipts are the upstream's."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt(i, tokens)}],
        "stream": True,
        "max_tokens": tokens,
    }
    stream = DirectStream(requested=time.time())
    async with http.post(f"{base_url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: ") and TOKEN_LINE in line:
                stream.tokens.append(time.time())
    return stream


async def user_stream(
    http: aiohttp.ClientSession, gateway_url: str, ws_fallback: str, token: str, i: int, tokens: int
) -> UserStream:
    """Submit one job, follow it over the WebSocket its links name, until its final event."""
    body = {
        "prompt": prompt(i, tokens),
        "job_type": "analysis",
        "priority": "normal",
        "config": {"model": MODEL, "max_tokens": tokens},
    }
    user = UserStream(submitted=time.time())
    async with http.post(f"{gateway_url}/api/v1/jobs", json=body) as resp:
        answer = await resp.json()
        user.accepted = time.time()
        if resp.status != 202:
            raise RuntimeError(f"submit answered {resp.status}: {answer}")
    job_id = answer["job_id"]
    url = (answer.get("links") or {}).get("websocket") or ws_fallback
    attempt = 0
    async with connect(url, compression=None, open_timeout=60, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}))
        async for raw in ws:
            received = time.time()
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "chunk":
                if msg["attempt"] != attempt:  # a retried attempt restarts the stream
                    attempt, user.chunks, user.first_emitted = msg["attempt"], [], None
                if msg["seq"] == 0:
                    user.first_emitted = datetime.fromisoformat(msg["emitted_at"]).timestamp()
                user.chunks.append((received, int(msg["tokens"])))
            elif kind == "event" and msg["event"] == "job.started":
                if msg["data"]["attempt"] >= attempt:
                    user.started = datetime.fromisoformat(msg["occurred_at"]).timestamp()
            elif kind == "event" and msg["event"] in FINAL:
                return user
            elif kind in ("error", "redirect"):
                raise RuntimeError(f"notifier answered {msg}")
    raise RuntimeError(f"the WebSocket closed before job {job_id} finished")


async def measure(
    simulator_url: str,
    gateway_url: str,
    ws_url: str,
    token: str,
    *,
    jobs: int = 50,
    tokens: int = 200,
) -> list[Figure]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=jobs * 2)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        direct = await asyncio.gather(
            *(direct_stream(http, simulator_url, i, tokens) for i in range(jobs))
        )
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=jobs * 2), timeout=timeout, headers=headers
    ) as http:
        # A warm-up burst of the same shape, two tokens a job: the connections, the
        # notifier's first reads, and the admission lane's transactional producers, whose
        # first commits right after the broker starts take hundreds of ms to become
        # visible to a read_committed fetch (a just-started stack, not the steady state).
        await asyncio.gather(
            *(
                asyncio.wait_for(user_stream(http, gateway_url, ws_url, token, jobs + i, 2), 60)
                for i in range(jobs)
            ),
            return_exceptions=True,
        )
        followed = await asyncio.gather(
            *(
                asyncio.wait_for(user_stream(http, gateway_url, ws_url, token, i, tokens), 90)
                for i in range(jobs)
            ),
            return_exceptions=True,
        )
    # A job that failed to stream is left out and counted, with the first reason seen.
    failures = [f for f in followed if isinstance(f, BaseException)]
    pairs = [(u, d) for u, d in zip(followed, direct, strict=True) if isinstance(u, UserStream)]
    users = [u for u, _ in pairs]

    added = [x * 1000 for u, d in pairs if (x := added_first_token(u, d)) is not None]
    lags = [x * 1000 for u, d in pairs for x in token_lags(u, d)]
    parts = [p for u, d in pairs if (p := first_token_parts(u, d)) is not None]
    direct_ttft = percentile([(d.tokens[0] - d.requested) * 1000 for d in direct if d.tokens], 50)
    unanchored = sum(u.first_emitted is None for u in users)
    took = percentile([u.chunks[-1][0] - u.chunks[0][0] for u in users if u.chunks], 50)
    took_direct = percentile([d.tokens[-1] - d.tokens[0] for d in direct if d.tokens], 50)
    setup = (
        f"{jobs} jobs of {tokens} tokens submitted at once through the gateway, each followed"
        " by a WebSocket client; the same prompts read straight from the simulator (raw SSE)"
        " just before"
    )
    lag_note = (
        "token lag, per token k: the client's receipt of the chunk carrying k minus"
        " (the first chunk's emitted_at, when the streamer had token 0 and flushed it, +"
        " how long after its token 0 the direct reader got token k); the stream's start"
        " is in the added time to first token; "
        f"{len(lags)} tokens; first to last token p50 {took:.2f} s at the client,"
        f" {took_direct:.2f} s direct"
        + (f", {unanchored} jobs without a first chunk left out" if unanchored else "")
        + (f"; {len(failures)} jobs did not stream ({failures[0]!r})" if failures else "")
    )
    return [
        Figure(
            "user: added time to first token p50 (gateway to WebSocket vs direct)",
            percentile(added, 50),
            "ms",
            "<= 20",
            f"{setup}; submit -> first token at the client, minus request -> first token read"
            f" directly (direct p50 {direct_ttft:.1f} ms)",
        ),
        *(
            Figure(
                f"user: added time to first token, {name} p50",
                percentile([p[i] * 1000 for p in parts], 50),
                "ms",
                "-",
                note,
            )
            for i, (name, note) in enumerate(PARTS)
        ),
        Figure(
            "user: token lag behind the upstream p50", percentile(lags, 50), "ms", "-", lag_note
        ),
        Figure("user: token lag behind the upstream p99", percentile(lags, 99), "ms", "<= 50"),
    ]
