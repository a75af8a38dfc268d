"""The WebSocket endpoint `/ws` (library `websockets`) and the ops routes on the same port.

One handler task reads the client's messages; what the hub queues for a client is
written to its socket at the end of the event-loop turn (`flush.py`), with no task of
its own, and keepalive pings go out from the sweep (`keepalive`), not from a task per
connection: at 20,000 connections each task costs. Plain HTTP requests for `/healthz`,
`/readyz` and `/metrics` are answered in `process_request` without an upgrade.
Every close the server makes carries one of the codes below (documented in
docs/websocket-protocol.md), and every reply goes through the bounded outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.notifier.access import MissingScope, TokenCheck
from services.notifier.authorisation import SubscribeError
from services.notifier.client import Client
from services.notifier.connection import BoundedConnection
from services.notifier.flush import Flusher
from services.notifier.frames import Frame, control, error_frame
from services.notifier.hub import Hub
from services.notifier.limits import ConnectionLimits, TooManyConnections
from services.notifier.metrics import NotifierMetrics
from services.notifier.protocol import Auth, BadMessage, Ping, Subscribe, parse_message
from services.notifier.settings import NotifierSettings
from shared.auth import InvalidToken, Principal

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 1013  # the notifier is at its connection cap: retry later, or elsewhere
CLOSE_AUTH = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW = 4008
CLOSE_USER_CAP = 4029
CLOSE_BAD_MESSAGE = 4400
CLOSE_SCOPE = 4403
MAX_BAD_MESSAGES = 20  # in a row: a client that only sends garbage is cut off (4400)
MAX_REFUSED = 50  # refused job subscriptions per connection: stops id guessing (4003)

ReadyCheck = Callable[[], dict[str, bool]]


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body)


class WebSocketEndpoint:
    def __init__(
        self,
        settings: NotifierSettings,
        hub: Hub,
        metrics: NotifierMetrics,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        limits: ConnectionLimits,
        tokens: TokenCheck,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.registry = registry
        self.ready = ready
        self.limits = limits
        self.tokens = tokens
        self.clients: dict[Client, BoundedConnection] = {}
        self.stalled: set[BoundedConnection] = set()  # frames waiting for a full socket
        self._sent = metrics.frames_sent.labels("ws")
        self._gauge = metrics.connections.labels("ws")
        self.flusher = Flusher(self.clients, self._sent.inc)
        # Summed on scrape, not on every sweep: a walk over every connection costs.
        metrics.buffered_bytes.set_function(self.buffered_bytes)
        # The keepalive round: every connection is visited once per ping interval.
        self._round: list[BoundedConnection] = []
        self._round_at = 0
        self._round_visited: float | None = None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/ws":
            if not all(self.ready().values()):
                return _response(503, b"not ready: replaying history\n", "text/plain")
            return None
        if path == "/healthz":
            return _response(200, b'{"status":"ok"}', "application/json")
        if path == "/readyz":
            checks = self.ready()
            ok = all(checks.values())
            body = json.dumps({"status": "ready" if ok else "not ready", "checks": checks})
            return _response(200 if ok else 503, body.encode(), "application/json")
        if path == "/metrics":
            return _response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        return _response(404, b"not found\n", "text/plain")

    async def handler(self, ws: ServerConnection) -> None:
        try:
            self.limits.open()  # before auth: sockets that never authenticate count too
        except TooManyConnections as exc:
            self.metrics.connections_refused.labels("process_cap").inc()
            with contextlib.suppress(ConnectionClosed):
                await ws.close(CLOSE_TRY_AGAIN, str(exc))
            return
        self._gauge.inc()
        if isinstance(ws, BoundedConnection):
            ws.forget_handshake()
        try:
            principal = await self._authenticate(ws)
            if principal is None:
                return
            try:
                self.limits.bind(principal.user_id)
            except TooManyConnections as exc:
                self.metrics.connections_refused.labels("user_cap").inc()
                await self._refuse(ws, CLOSE_USER_CAP, "too_many_connections", str(exc))
                return
            try:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(control("authenticated", user_id=principal.user_id).text)
                await self._serve(ws, principal)
            finally:
                self.limits.unbind(principal.user_id)
        finally:
            self._gauge.dec()
            self.limits.close()

    async def _authenticate(self, ws: ServerConnection) -> Principal | None:
        try:
            async with asyncio.timeout(self.settings.notifier_auth_timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            self.metrics.auth_failures.labels("timeout").inc()
            await ws.close(CLOSE_AUTH, "auth timeout")
            return None
        except ConnectionClosed:
            return None
        try:
            message = parse_message(raw)
        except BadMessage as exc:
            message = None
            detail = exc.message
        else:
            detail = "the first message must be {'type': 'auth', 'token': ...}"
        if not isinstance(message, Auth):
            self.metrics.auth_failures.labels("missing").inc()
            await self._refuse(ws, CLOSE_AUTH, "auth_required", detail)
            return None
        try:
            principal = self.tokens.reader(message.token)
        except InvalidToken as exc:
            self.metrics.auth_failures.labels("invalid").inc()
            await self._refuse(ws, CLOSE_AUTH, "bad_token", str(exc))
            return None
        except MissingScope as exc:
            self.metrics.auth_failures.labels("scope").inc()
            await self._refuse(ws, CLOSE_SCOPE, "insufficient_scope", str(exc))
            return None
        return principal

    async def _refuse(self, ws: ServerConnection, close_code: int, code: str, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(error_frame(code, message).text)
            await ws.close(close_code, code)

    async def _serve(self, ws: ServerConnection, principal: Principal) -> None:
        if not isinstance(ws, BoundedConnection):  # serve(create_connection=BoundedConnection)
            raise TypeError(f"unexpected connection class {type(ws).__name__}")
        conn = ws

        def kill(code: int, reason: str) -> None:
            # What is queued cannot be sent to a client that stopped reading: dropped.
            client.close(code, reason)
            client.reset(())
            client.send_started = None
            self.stalled.discard(conn)
            conn.shut(code, reason)

        client = Client(
            principal, self.settings.notifier_queue_frames, kill=kill, wake=self.flusher.mark
        )
        self.clients[client] = conn
        conn.attach(client, self.stalled, self._sent.inc)
        try:
            await self._read(conn, client)
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(client, None)
            self.stalled.discard(conn)
            self.hub.drop(client)

    async def _read(self, ws: ServerConnection, client: Client) -> None:
        bad_in_a_row = 0
        refused = 0
        hub = self.hub

        def on_subscribe(_channel: str, ok: bool) -> None:
            nonlocal refused
            if not ok:
                refused += 1
                if refused >= MAX_REFUSED:
                    client.close(CLOSE_FORBIDDEN, "too many refused subscriptions")

        def reply(frame: Frame) -> None:
            hub.reply(client, [frame])

        client.on_subscribe = on_subscribe
        async for raw in ws:
            if client.closing is not None:
                continue  # being closed by the server: what the client still sends is ignored
            try:
                message = parse_message(raw)
                if isinstance(message, Subscribe):
                    if message.kind == "job":
                        hub.subscribe_job(
                            client,
                            message.ident,
                            message.last_seq,
                            message.attempt,
                            time.monotonic(),
                        )
                    else:
                        hub.subscribe_user(client, message.ident)
                elif isinstance(message, Ping):
                    reply(control("pong", id=message.ident))
                elif isinstance(message, Auth):
                    reply(error_frame("bad_message", "already authenticated"))
                else:
                    ok = hub.unsubscribe(client, message.channel)
                    reply(control("unsubscribed", channel=message.channel, existed=ok))
                bad_in_a_row = 0
            except BadMessage as exc:
                self.metrics.bad_messages.inc()
                bad_in_a_row += 1
                reply(error_frame(exc.code, exc.message))
                if bad_in_a_row >= MAX_BAD_MESSAGES:
                    client.close(CLOSE_BAD_MESSAGE, "too many bad messages")
            except SubscribeError as exc:
                channel = message.channel if isinstance(message, Subscribe) else None
                reply(error_frame(exc.code, exc.message, channel=channel))

    def buffered_bytes(self) -> int:
        """What the server holds for its WebSocket clients: outboxes and socket buffers."""
        total = 0
        for client, conn in self.clients.items():
            total += client.queued_chars + conn.buffered_bytes()
        return total

    def close_revoked(self, token_id: str) -> None:
        """A revoked token ends the connections it opened, not only the next ones."""
        for client in list(self.clients):
            if client.principal is not None and client.principal.token_id == token_id:
                client.push([error_frame("token_revoked", "the token was revoked")])
                client.close(CLOSE_AUTH, "token revoked")

    def sweep(self, now: float) -> None:
        """Close connections whose send has been blocked too long (the client stopped reading),
        and take the keepalive round a step further."""
        limit = self.settings.notifier_slow_consumer_s
        for conn in list(self.stalled):
            client = conn.client
            started = client.send_started if client is not None else None
            if client is None or started is None:
                self.stalled.discard(conn)
            elif now - started > limit:
                self.metrics.slow_closes.inc()
                client.kill(CLOSE_SLOW, "slow consumer")
        self.keepalive(asyncio.get_running_loop().time())

    def keepalive(self, now: float) -> None:
        """Visit the share of connections due since the last call, so that each one is
        visited about once per ping interval (`BoundedConnection.visit_keepalive`).

        An unanswered ping is noticed at a later visit: a dead client goes within the ping
        timeout plus up to one interval.
        """
        s = self.settings
        last, self._round_visited = self._round_visited, now
        if last is None:
            return
        if self._round_at >= len(self._round):
            self._round = list(self.clients.values())
            self._round_at = 0
        due = math.ceil(len(self._round) * (now - last) / s.notifier_ping_interval_s)
        end = min(len(self._round), self._round_at + due)
        for conn in self._round[self._round_at : end]:
            conn.visit_keepalive(now, s.notifier_ping_interval_s, s.notifier_ping_timeout_s)
        self._round_at = end
