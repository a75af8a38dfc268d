"""`python -m deploy.doctor [--monitor] [--type T] [--priority P] [--timeout S]`

Checks the prerequisites (Python, Java), the infrastructure (Kafka and its topics,
PostgreSQL, the LLM endpoint), each service's /readyz, then streams one job end to end:
REST submit, live tokens over the WebSocket, stored result equal to the stream.
Prints one line per check; exits 0 only when every check passed. Settings come from the
environment, or from `.state/stack.env` (written by `make run`) for what is not set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp

from deploy.doctor import probes
from deploy.doctor.report import Check, exit_code, summary
from deploy.doctor.settings import DoctorSettings
from shared.topics import Priority

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROMPT = "In three sentences, explain why a priority queue helps an LLM service."


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def report(check: Check, checks: list[Check]) -> None:
    checks.append(check)
    say(check.line())


async def run(args: argparse.Namespace, settings: DoctorSettings) -> int:
    checks: list[Check] = []
    report(probes.check_python(), checks)
    report(probes.check_java(), checks)
    for check in await probes.check_kafka(settings):
        report(check, checks)
    pg = await probes.check_postgres(settings)
    if pg is not None:
        report(pg, checks)
    async with aiohttp.ClientSession(timeout=probes.HTTP_TIMEOUT) as http:
        report(await probes.check_llm(http, settings), checks)
        for name, base in settings.service_urls().items():
            report(await probes.check_ready(http, name, base), checks)
    report(
        await probes.round_trip(
            settings,
            job_type=args.type,
            priority=args.priority,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout,
            monitor=args.monitor,
            say=say,
        ),
        checks,
    )
    say(summary(checks))
    return exit_code(checks)


def load_settings(env_file: Path | None) -> DoctorSettings:
    if env_file is not None and env_file.is_file():
        return DoctorSettings(_env_file=env_file)
    return DoctorSettings()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.doctor",
        description=(__doc__ or "").splitlines()[2].strip(),
    )
    # The gateway's workload file decides which types exist; it refuses others by name.
    parser.add_argument("--type", default="analysis", help="a job type of GET /api/v1/job-types")
    parser.add_argument("--priority", default="high", choices=[p.value for p in Priority])
    parser.add_argument("--monitor", action="store_true", help="print tokens, tokens/s, elapsed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the test job")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument(
        "--env-file",
        type=Path,
        default=ROOT / ".state" / "stack.env",
        help="read unset variables from this file (default .state/stack.env)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args, load_settings(args.env_file)))


if __name__ == "__main__":
    raise SystemExit(main())
