"""Start the results service: settings from the environment, run until SIGTERM."""

from __future__ import annotations

import asyncio

from services.results.app import create_service
from services.results.settings import ResultsSettings
from shared.logs import configure
from shared.runtime import run_until_signal, tune_collector


def main() -> None:
    settings = ResultsSettings()
    configure("results", settings.log_level, json_lines=settings.log_json)
    tune_collector(settings.gc_young_threshold)
    service = create_service(settings)
    # A non-zero exit when a background loop died: the supervisor restarts the process.
    raise SystemExit(asyncio.run(run_until_signal(service, "results", loops=service.background)))


if __name__ == "__main__":
    main()
