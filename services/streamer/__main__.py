"""Start the streamer: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.streamer.app import create_service
from services.streamer.settings import StreamerSettings
from shared.logs import configure
from shared.runtime import run_until_signal


def main() -> None:
    settings = StreamerSettings()
    configure("streamer", settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_until_signal(create_service(settings), "streamer"))


if __name__ == "__main__":
    main()
