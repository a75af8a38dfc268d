"""`python -m deploy.simulator [--host H] [--port P] ...`: serve the simulator until SIGTERM.

Flags override the `SIM_*` environment variables of `SimulatorSettings`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pydantic import ValidationError

from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from shared.logs import configure
from shared.runtime import run_until_signal

# flags -> (settings field, type, help)
FLAGS: dict[tuple[str, ...], tuple[str, type, str]] = {
    ("--host",): ("host", str, "address to listen on"),
    ("--port",): ("port", int, "port to listen on (0: any free port)"),
    ("--ttft-ms",): ("ttft_ms", float, "time to first token, ms"),
    ("--tokens-per-second", "--tps"): (
        "tokens_per_second",
        float,
        "token rate (0: as fast as possible)",
    ),
    ("--completion-tokens",): (
        "completion_tokens",
        int,
        "completion length unless max_tokens cuts",
    ),
    ("--error-rate",): ("error_rate", float, "fraction of requests answered 500"),
    ("--rate-limit-rate",): ("rate_limit_rate", float, "fraction of requests answered 429"),
    ("--drop-rate",): ("drop_rate", float, "fraction of streams cut mid-way"),
    ("--retry-after",): ("retry_after", float, "Retry-After seconds of 429/503 answers"),
    ("--seed",): ("seed", int, "mixed into every completion and the random faults"),
    ("--dialect",): ("dialect", str, "server dialect of /v1: openai, no_usage, role_first, ..."),
    ("--log-level",): ("log_level", str, "DEBUG, INFO, WARNING..."),
}


def build_settings(argv: list[str] | None = None) -> SimulatorSettings:
    parser = argparse.ArgumentParser(prog="python -m deploy.simulator", description=__doc__)
    for flags, (name, kind, text) in FLAGS.items():
        parser.add_argument(*flags, dest=name, type=kind, default=None, help=text)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return SimulatorSettings(**overrides)
    except ValidationError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(argv)
    configure("simulator", settings.log_level, json_lines=settings.log_json)
    asyncio.run(run_until_signal(Simulator(settings), "simulator"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
