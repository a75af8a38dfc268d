"""Start the gateway: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.gateway.app import create_service
from services.gateway.settings import GatewaySettings
from shared.logs import configure
from shared.runtime import run_until_signal, tune_collector


def main() -> None:
    settings = GatewaySettings()
    configure("gateway", settings.log_level, json_lines=settings.log_json)
    tune_collector(settings.gc_young_threshold)
    service = create_service(settings)
    # A non-zero exit when a background loop died: the supervisor restarts the process.
    raise SystemExit(asyncio.run(run_until_signal(service, "gateway", loops=service.background)))


if __name__ == "__main__":
    main()
