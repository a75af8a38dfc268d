"""Start the notifier: settings from the environment, run until SIGTERM (clients get 1001)."""

from __future__ import annotations

import asyncio

from services.notifier.app import create_service
from services.notifier.settings import NotifierSettings
from shared.logs import configure
from shared.runtime import run_until_signal


def main() -> None:
    settings = NotifierSettings()
    configure("notifier", settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_until_signal(create_service(settings), "notifier"))


if __name__ == "__main__":
    main()
