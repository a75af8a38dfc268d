"""Start the streamer: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.streamer.app import create_service
from services.streamer.settings import StreamerSettings
from shared.logs import configure
from shared.runtime import run_until_signal, tune_collector


def main() -> None:
    settings = StreamerSettings()
    configure("streamer", settings.log_level, json_lines=settings.log_json)
    tune_collector(settings.gc_young_threshold)
    service = create_service(settings)
    # A non-zero exit when a background loop died: the supervisor restarts the process.
    raise SystemExit(asyncio.run(run_until_signal(service, "streamer", loops=service.background)))


if __name__ == "__main__":
    main()
