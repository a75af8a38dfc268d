"""The simulator as a service with explicit `start()`/`stop()`, for `__main__` and for tests."""

from __future__ import annotations

import logging
from types import TracebackType

from aiohttp import web

from deploy.simulator.app import STATE, create_app
from deploy.simulator.settings import SimulatorSettings
from deploy.simulator.stats import Stats

log = logging.getLogger(__name__)


class Simulator:
    """Serves the simulator on `settings.host:settings.port` (port 0 picks a free one)."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.port = settings.port
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return f"{self.url}/v1"

    @property
    def stats(self) -> Stats:
        if self._app is None:
            raise RuntimeError("the simulator is not running")
        return self._app[STATE].stats

    async def start(self) -> None:
        s = self.settings
        self._app = create_app(s)
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,  # a line per request would cost more than the request
            shutdown_timeout=s.shutdown_timeout_s,
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, s.host, s.port, backlog=s.backlog)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = runner.addresses[0][1]
        log.info(
            "simulator listening on %s (ttft %gms, %g tokens/s, %d tokens, "
            "error %g, rate-limit %g, drop %g)",
            self.url,
            s.ttft_ms,
            s.tokens_per_second,
            s.completion_tokens,
            s.error_rate,
            s.rate_limit_rate,
            s.drop_rate,
        )

    async def stop(self) -> None:
        """Stop listening, release hung streams, let open streams finish; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
