"""Start the results service: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.results.app import create_service
from services.results.settings import ResultsSettings
from shared.logs import configure
from shared.runtime import run_until_signal


def main() -> None:
    settings = ResultsSettings()
    configure("results", settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_until_signal(create_service(settings), "results"))


if __name__ == "__main__":
    main()
