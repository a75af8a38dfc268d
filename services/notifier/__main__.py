"""Start the notifier: settings from the environment, run until SIGTERM (clients get 1001)."""

from __future__ import annotations

import asyncio

from services.notifier.app import create_service
from services.notifier.settings import NotifierSettings
from shared.logs import configure
from shared.runtime import run_until_signal, tune_collector


def main() -> None:
    settings = NotifierSettings()
    configure("notifier", settings.log_level, json_lines=settings.log_json)
    tune_collector(settings.gc_young_threshold)
    service = create_service(settings)
    # A non-zero exit when a background loop died: the supervisor restarts the process.
    raise SystemExit(asyncio.run(run_until_signal(service, "notifier", loops=service.background)))


if __name__ == "__main__":
    main()
