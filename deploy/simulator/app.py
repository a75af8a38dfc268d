"""The simulator's HTTP routes: OpenAI's chat completions and models, health, and `/_sim/*`."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from deploy.simulator.dialects import DIALECTS, Dialect
from deploy.simulator.received import Received, serve
from deploy.simulator.script import (
    ChatRequest,
    InvalidRequest,
    Plan,
    Planner,
    Vocabulary,
    parse_chat_request,
)
from deploy.simulator.settings import SimulatorSettings
from deploy.simulator.stats import Stats
from deploy.simulator.wire import completion_body, dumps, error_body

# How often a long pause looks whether the client hung up.
DISCONNECT_POLL_S = 0.05
# Tokens per write when the rate is unlimited (tps=0), so other streams get their turn.
FAST_BATCH = 32
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


class ClientGone(ConnectionResetError):
    """The client closed the connection while the simulator was pausing."""


@dataclass
class SimulatorState:
    settings: SimulatorSettings
    vocabulary: Vocabulary
    planner: Planner
    stats: Stats = field(default_factory=Stats)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    received: Received = field(default_factory=lambda: Received(0))


STATE = web.AppKey("simulator_state", SimulatorState)


def create_app(settings: SimulatorSettings) -> web.Application:
    vocabulary = Vocabulary()
    state = SimulatorState(
        settings,
        vocabulary,
        Planner(settings, vocabulary),
        received=Received(settings.keep_requests),
    )
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    # One simulator plays several servers: the path names the dialect (dialects.py).
    app.router.add_post("/dialects/{dialect}/v1/chat/completions", chat_completions)
    app.router.add_get("/dialects/{dialect}/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset", sim_reset)
    app.router.add_get("/_sim/requests", sim_requests)

    async def release_hung_streams(_: web.Application) -> None:
        state.stopping.set()

    app.on_shutdown.append(release_hung_streams)
    return app


def error_response(
    state: SimulatorState,
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    retry_after_s: float | None = None,
) -> web.Response:
    """OpenAI's error JSON; 429 and 503 tell the client when to retry."""
    state.stats.errors_by_status[status] += 1
    headers = {"x-request-id": _request_id()}
    if retry_after_s is not None and status in (429, 503):
        headers["Retry-After"] = str(math.ceil(retry_after_s))
        headers["retry-after-ms"] = str(round(retry_after_s * 1000))
    return web.Response(
        status=status,
        body=dumps(error_body(status, message, param)),
        content_type="application/json",
        headers=headers,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.stats.requests_total += 1
    dialect = DIALECTS.get(request.match_info.get("dialect", state.settings.dialect))
    if dialect is None:
        known = ", ".join(DIALECTS)
        return error_response(state, 404, f"unknown dialect (known: {known})")
    raw = await request.read()
    state.received.add(request.path, raw)
    try:
        body = json.loads(raw)
    except ValueError:
        return error_response(state, 400, "We could not parse the JSON body of your request.")
    try:
        chat = parse_chat_request(body)
        plan = state.planner.plan(chat)
    except InvalidRequest as exc:
        return error_response(state, 400, exc.message, param=exc.param)
    if plan.error_status is not None:
        return error_response(state, plan.error_status, retry_after_s=plan.retry_after_s)
    if chat.stream:
        return await stream_completion(request, state, chat, plan, dialect)
    return await whole_completion(request, state, chat, plan)


async def stream_completion(
    request: web.Request, state: SimulatorState, chat: ChatRequest, plan: Plan, dialect: Dialect
) -> web.StreamResponse:
    stats = state.stats
    completion_id = _completion_id()
    encoder = dialect.encoder(
        completion_id=completion_id,
        created=int(time.time()),
        model=chat.model,
        include_usage=chat.include_usage,
    )
    tokens = encoded_tokens(plan, state.vocabulary)
    stop_at = plan.cut_after if plan.cut_after is not None else plan.hang_after
    limit = len(tokens) if stop_at is None else min(stop_at, len(tokens))
    resp = web.StreamResponse(headers={**SSE_HEADERS, "x-request-id": _request_id()})
    stats.streams_started += 1
    stats.streams_active += 1
    try:
        await resp.prepare(request)
        role = encoder.role()
        if dialect.role_only_first:
            await resp.write(role)  # on its own, before the first token is due
            role = b""
        await pause(request, plan.ttft_s)
        await send_tokens(
            request, resp, encoder.tokens, tokens[:limit], plan.interval_s, stats, role
        )
        role = role if limit == 0 else b""
        if plan.cut_after is not None:
            stats.streams_cut += 1
            cut(request)
            return resp
        if plan.hang_after is not None:
            stats.streams_hung += 1
            await hang(request, state)
            return resp
        if plan.tool_calls:
            calls = encoder.tool_calls(plan.tool_calls)
            await send_tokens(request, resp, b"".join, calls, plan.interval_s, stats, role)
            role = b""
        tail = [role, encoder.finish(plan.finish_reason)]
        if chat.include_usage:
            tail.append(
                encoder.usage(
                    plan.prompt_tokens,
                    plan.completion_tokens,
                    plan.cached_tokens,
                    plan.reasoning_tokens,
                )
            )
        tail.append(encoder.done())
        await resp.write(b"".join(tail))
        await resp.write_eof()
        stats.streams_completed += 1
    except ConnectionError:
        stats.streams_cancelled_by_client += 1
    finally:
        stats.streams_active -= 1
    return resp


def encoded_tokens(plan: Plan, vocabulary: Vocabulary) -> list[bytes]:
    """Each token of the plan as a JSON string; a structured output's are encoded here."""
    if plan.texts is not None:
        return [json.dumps(text).encode() for text in plan.texts]
    encoded = vocabulary.encoded
    return [encoded[i] for i in plan.tokens]


async def send_tokens(
    request: web.Request,
    resp: web.StreamResponse,
    encode: Callable[[Sequence[bytes]], bytes],
    tokens: Sequence[bytes],
    interval_s: float,
    stats: Stats,
    role: bytes = b"",
) -> None:
    """Send `tokens` on schedule (token k at start + k*interval); a late stream catches up in
    one write, so a loaded simulator keeps its token rate instead of drifting. `role` (the
    role chunk, unless sent already) goes with the first write."""
    if not tokens:
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = len(tokens)
    sent = 0
    while sent < total:
        if interval_s:
            due = min(total, max(sent + 1, int((loop.time() - start) / interval_s) + 1))
        else:
            due = min(total, sent + FAST_BATCH)
        data = encode(tokens[sent:due])
        await resp.write(role + data if sent == 0 else data)
        stats.tokens_sent += due - sent
        sent = due
        if sent < total:
            await pause(request, start + sent * interval_s - loop.time())


async def whole_completion(
    request: web.Request, state: SimulatorState, chat: ChatRequest, plan: Plan
) -> web.StreamResponse:
    stop_at = plan.cut_after if plan.cut_after is not None else plan.hang_after
    count = plan.count if stop_at is None else min(stop_at, plan.count)
    try:
        await pause(request, plan.ttft_s + count * plan.interval_s)
        if plan.hang_after is not None:
            state.stats.streams_hung += 1
            await hang(request, state)
            return web.Response(status=500)  # never sent: the connection is closed
        if plan.cut_after is not None:
            state.stats.streams_cut += 1
            cut(request)
            return web.Response(status=500)
    except ConnectionError:
        state.stats.completions_cancelled_by_client += 1
        return web.Response(status=500)
    state.stats.completions_total += 1
    completion_id = _completion_id()
    return web.Response(
        body=completion_body(
            completion_id=completion_id,
            created=int(time.time()),
            model=chat.model,
            text="".join(plan.texts)
            if plan.texts is not None
            else state.vocabulary.text(plan.tokens),
            finish_reason=plan.finish_reason,
            prompt_tokens=plan.prompt_tokens,
            completion_tokens=plan.completion_tokens,
            tool_calls=plan.tool_calls,
        ),
        content_type="application/json",
        headers={"x-request-id": _request_id()},
    )


async def pause(request: web.Request, delay_s: float) -> None:
    """Sleep `delay_s` (at least yield once), raising `ClientGone` if the client hangs up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay_s
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client closed the connection")
        left = deadline - loop.time()
        if left <= DISCONNECT_POLL_S:
            await asyncio.sleep(max(left, 0.0))
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


async def hang(request: web.Request, state: SimulatorState) -> None:
    """Stall until the client hangs up (raises `ClientGone`) or the server stops (cuts)."""
    while not state.stopping.is_set():
        await pause(request, DISCONNECT_POLL_S)
    cut(request)


def cut(request: web.Request) -> None:
    """Close the connection mid-response: what was written is flushed, the body never ends."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def list_models(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    created = 1_700_000_000
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "streamjobs-sim"}
                for m in settings.models
            ],
        }
    )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot())


async def sim_requests(request: web.Request) -> web.Response:
    return await serve(request, request.app[STATE].received)


async def sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.reset()
    state.planner.reset()
    state.received.clear()
    return web.json_response(state.stats.snapshot())


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(21)


def _request_id() -> str:
    return "req_" + secrets.token_hex(16)
