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
from websockets.protocol import State

from services.notifier.access import MissingScope, TokenCheck
from services.notifier.authorisation import SubscribeError
from services.notifier.client import Client
from services.notifier.connection import CLOSE_SLOW, BoundedConnection
from services.notifier.flush import Flusher
from services.notifier.frames import control, error_frame
from services.notifier.hub import Hub
from services.notifier.limits import ConnectionLimits, TooManyConnections
from services.notifier.metrics import NotifierMetrics
from services.notifier.protocol import Auth, BadMessage, Message, Ping, Subscribe, parse_message
from services.notifier.settings import NotifierSettings
from shared.auth import InvalidToken

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 1013  # the notifier is at its connection cap: retry later, or elsewhere
CLOSE_AUTH = 4001
CLOSE_FORBIDDEN = 4003
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
        try:
            if not isinstance(ws, BoundedConnection):  # serve(create_connection=...)
                raise TypeError(f"unexpected connection class {type(ws).__name__}")
            ws.forget_handshake()
            session = Session(self, ws)
            client = session.client
            self.clients[client] = ws
            ws.attach(
                client,
                self.stalled,
                on_sent=self._sent.inc,
                on_message=session.on_message,
                on_lost=session.lost,
            )
            try:
                await self._serve(ws, session)
            finally:
                self.clients.pop(client, None)
                self.stalled.discard(ws)
                self.hub.drop(client)
                if session.user_id is not None:
                    self.limits.unbind(session.user_id)
        finally:
            self._gauge.dec()
            self.limits.close()

    async def _serve(self, ws: BoundedConnection, session: Session) -> None:
        """Wait for the auth message, then for the end: messages are handled as they come."""
        authed = session.authed
        if authed is None:
            raise RuntimeError("a session is served once")
        try:
            async with asyncio.timeout(self.settings.notifier_auth_timeout_s):
                await authed
        except TimeoutError:
            self.metrics.auth_failures.labels("timeout").inc()
            await ws.close(CLOSE_AUTH, "auth timeout")
            return
        session.authed = None
        del authed  # not held while the connection lasts
        # A future of its own, not wait_closed(): its shield costs three objects more per
        # connection, and 20,000 connections wait here.
        ended = session.ended = asyncio.get_running_loop().create_future()
        if ws.state is not State.CLOSED:
            await ended

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


class Session:
    """One WebSocket connection's conversation: an auth message first, then subscriptions.

    Each message is handled in the connection's receive callback, on the event loop
    without awaiting (replies go through the client's bounded outbox), so a connection
    needs no task reading it.
    """

    __slots__ = (
        "authed",
        "bad_in_a_row",
        "client",
        "conn",
        "ended",
        "endpoint",
        "refused",
        "user_id",
    )

    def __init__(self, endpoint: WebSocketEndpoint, conn: BoundedConnection) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.client = Client(
            None,
            endpoint.settings.notifier_queue_frames,
            kill=self.kill,
            on_subscribe=self.on_subscribe,
            wake=endpoint.flusher.mark,
            drain=endpoint.flusher.write_now,
        )
        # Done with True once authenticated, False once refused or gone.
        self.authed: asyncio.Future[bool] | None = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[None] | None = None  # done once the connection is closed
        self.user_id: str | None = None  # bound in the limits once authenticated
        self.bad_in_a_row = 0
        self.refused = 0

    def _settle(self, ok: bool) -> None:
        if self.authed is not None and not self.authed.done():
            self.authed.set_result(ok)

    def lost(self) -> None:
        self._settle(False)
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def kill(self, code: int, reason: str) -> None:
        # What is queued cannot be sent to a client that stopped reading: dropped.
        client = self.client
        client.close(code, reason)
        client.reset(())
        client.send_started = None
        self.endpoint.stalled.discard(self.conn)
        self.conn.shut(code, reason)

    def on_subscribe(self, _channel: str, ok: bool) -> None:
        if not ok:
            self.refused += 1
            if self.refused >= MAX_REFUSED:
                self.client.close(CLOSE_FORBIDDEN, "too many refused subscriptions")

    def _refuse(self, close_code: int, code: str, message: str) -> None:
        self.client.push([error_frame(code, message)])
        self.client.close(close_code, code)
        self._settle(False)

    def _authenticate(self, raw: str | bytes) -> None:
        endpoint = self.endpoint
        failures = endpoint.metrics.auth_failures
        try:
            message = parse_message(raw)
        except BadMessage as exc:
            message = None
            detail = exc.message
        else:
            detail = "the first message must be {'type': 'auth', 'token': ...}"
        if not isinstance(message, Auth):
            failures.labels("missing").inc()
            self._refuse(CLOSE_AUTH, "auth_required", detail)
            return
        try:
            principal = endpoint.tokens.reader(message.token)
        except InvalidToken as exc:
            failures.labels("invalid").inc()
            self._refuse(CLOSE_AUTH, "bad_token", str(exc))
            return
        except MissingScope as exc:
            failures.labels("scope").inc()
            self._refuse(CLOSE_SCOPE, "insufficient_scope", str(exc))
            return
        try:
            endpoint.limits.bind(principal.user_id)
        except TooManyConnections as exc:
            endpoint.metrics.connections_refused.labels("user_cap").inc()
            self._refuse(CLOSE_USER_CAP, "too_many_connections", str(exc))
            return
        self.user_id = principal.user_id
        self.client.principal = principal
        self.client.push([control("authenticated", user_id=principal.user_id)])
        self._settle(True)

    def on_message(self, raw: str | bytes) -> None:
        client = self.client
        if client.closing is not None:
            return  # being closed by the server: what the client still sends is ignored
        if client.principal is None:
            self._authenticate(raw)
            return
        hub = self.endpoint.hub
        message: Message | None = None
        try:
            message = parse_message(raw)
            if isinstance(message, Subscribe):
                if message.kind == "job":
                    hub.subscribe_job(
                        client, message.ident, message.last_seq, message.attempt, time.monotonic()
                    )
                else:
                    hub.subscribe_user(client, message.ident)
            elif isinstance(message, Ping):
                hub.reply(client, [control("pong", id=message.ident)])
            elif isinstance(message, Auth):
                hub.reply(client, [error_frame("bad_message", "already authenticated")])
            else:
                ok = hub.unsubscribe(client, message.channel)
                hub.reply(client, [control("unsubscribed", channel=message.channel, existed=ok)])
            self.bad_in_a_row = 0
        except BadMessage as exc:
            self.endpoint.metrics.bad_messages.inc()
            self.bad_in_a_row += 1
            hub.reply(client, [error_frame(exc.code, exc.message)])
            if self.bad_in_a_row >= MAX_BAD_MESSAGES:
                client.close(CLOSE_BAD_MESSAGE, "too many bad messages")
        except SubscribeError as exc:
            channel = message.channel if isinstance(message, Subscribe) else None
            hub.reply(client, [error_frame(exc.code, exc.message, channel=channel)])
