"""Start the gateway: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.gateway.app import create_service
from services.gateway.settings import GatewaySettings
from shared.logs import configure
from shared.runtime import run_until_signal


def main() -> None:
    settings = GatewaySettings()
    configure("gateway", settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_until_signal(create_service(settings), "gateway"))


if __name__ == "__main__":
    main()
