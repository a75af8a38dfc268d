"""The WebSocket endpoint `/ws` (library `websockets`) and the ops routes on the same port.

One handler task reads the client's messages; one writer task per connection
sends what the hub queued for it. Plain HTTP requests for `/healthz`,
`/readyz` and `/metrics` are answered in `process_request` without an upgrade.
Every close the server makes carries one of the codes below (documented in
docs/websocket-protocol.md), and every reply goes through the bounded outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
        self.clients: dict[Client, ServerConnection] = {}
        self._sent = metrics.frames_sent.labels("ws")
        self._gauge = metrics.connections.labels("ws")

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
        def kill(code: int, reason: str) -> None:
            client.close(code, reason)
            # The writer may be stuck in a send to a client that stopped reading.
            writer.cancel()
            asyncio.get_running_loop().create_task(ws.close(code, reason))

        client = Client(principal, self.settings.notifier_queue_frames, kill=kill)
        writer = asyncio.create_task(self._write(ws, client))
        self.clients[client] = ws
        try:
            await self._read(ws, client)
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(client, None)
            self.hub.drop(client)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    async def _write(self, ws: ServerConnection, client: Client) -> None:
        sent = self._sent
        while True:
            frames = await client.take()
            if not frames:
                code, reason = client.closing or (1000, "")
                await ws.close(code, reason)
                return
            for frame in frames:
                client.send_started = time.monotonic()
                await ws.send(frame.text)
            client.send_started = None
            client.inflight_chars = 0
            sent.inc(len(frames))

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
        """What the server holds for its WebSocket clients: outboxes, batches in flight, sockets."""
        total = 0
        for client, ws in self.clients.items():
            total += client.queued_chars + client.inflight_chars
            if isinstance(ws, BoundedConnection):
                total += ws.buffered_bytes()
        return total

    def close_revoked(self, token_id: str) -> None:
        """A revoked token ends the connections it opened, not only the next ones."""
        for client in list(self.clients):
            if client.principal is not None and client.principal.token_id == token_id:
                client.push([error_frame("token_revoked", "the token was revoked")])
                client.close(CLOSE_AUTH, "token revoked")

    def sweep(self, now: float) -> None:
        """Close connections whose send has been blocked too long (the client stopped reading)."""
        limit = self.settings.notifier_slow_consumer_s
        self.metrics.buffered_bytes.set(self.buffered_bytes())
        for client in list(self.clients):
            started = client.send_started
            if started is not None and now - started > limit:
                self.metrics.slow_closes.inc()
                client.send_started = None
                client.kill(CLOSE_SLOW, "slow consumer")
