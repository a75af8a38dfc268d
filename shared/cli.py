"""The `streamjobs` command: submit, follow and inspect jobs, mint tokens, run the local stack.

Where it connects: --url/--token/--ws-url, else STREAMJOBS_URL, STREAMJOBS_TOKEN and
STREAMJOBS_WS_URL, else .state/stack.env (written by `make run`).

Exit status: 0 done (a followed job completed), 1 the job failed, 2 usage or a request
refused as invalid, 3 the job was cancelled, 4 not found or not allowed (unknown job, bad
token, missing scope), 5 the gateway or the notifier cannot be reached, 6 any other refusal
(rate limited, conflict).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime

from shared import __version__
from shared.lifecycle import JobStatus
from shared.topics import Priority

STACK_COMMANDS = ("up", "down", "doctor")
USAGE = 2  # the exit status of a usage error, as argparse has it


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date-time") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamjobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"streamjobs {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--url", help="the gateway's base URL (default: STREAMJOBS_URL)")
    where.add_argument("--token", help="an API token (default: STREAMJOBS_TOKEN)")
    where.add_argument("--ws-url", help="the notifier's WebSocket URL, when a job names none")
    shown = argparse.ArgumentParser(add_help=False)
    shown.add_argument("--json", action="store_true", help="print JSON instead of a table")

    submit = commands.add_parser("submit", parents=[where, shown], help="submit a job")
    submit.add_argument("prompt")
    submit.add_argument("--job-type", default="analysis")
    submit.add_argument("--priority", default="normal", choices=[p.value for p in Priority])
    submit.add_argument("--model", help="default: the gateway's (gpt-4o-mini)")
    submit.add_argument("--max-tokens", type=int)
    submit.add_argument("--temperature", type=float)
    submit.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--idempotency-key", help="the same key and body give the same job")
    submit.add_argument(
        "--follow", "-f", action="store_true", help="stream the text live with a progress bar"
    )

    follow = commands.add_parser("follow", parents=[where], help="stream a job's text live")
    follow.add_argument("job_id")
    status = commands.add_parser("status", parents=[where, shown], help="a job's status")
    status.add_argument("job_id")
    cancel = commands.add_parser("cancel", parents=[where, shown], help="cancel a job")
    cancel.add_argument("job_id")
    retry = commands.add_parser(
        "retry", parents=[where, shown], help="run a failed or cancelled job again"
    )
    retry.add_argument("job_id")
    retry.add_argument("--idempotency-key", help="the same key gives the same new job")
    retry.add_argument("--follow", "-f", action="store_true", help="stream the new job's text live")
    result = commands.add_parser("result", parents=[where, shown], help="a job's stored result")
    result.add_argument("job_id")
    result.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait for it (s)")

    jobs = commands.add_parser("jobs", parents=[where, shown], help="your jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--job-type")
    jobs.add_argument("--priority", choices=[p.value for p in Priority])
    jobs.add_argument("--user", help="admin: one user's jobs")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")

    figures = commands.add_parser("analytics", parents=[where, shown], help="figures, grouped")
    figures.add_argument("--since", type=_moment, help="ISO 8601 (default: a day ago)")
    figures.add_argument("--until", type=_moment, help="ISO 8601 (default: now)")
    figures.add_argument("--group-by", default="", help="comma-separated: model,job_type,...")
    figures.add_argument("--bucket", choices=["minute", "hour", "day"])

    commands.add_parser(
        "token",
        add_help=False,
        help="mint a token (token USER [--scopes ...]) or revoke one (token revoke JTI)",
    )
    commands.add_parser("up", help="start the local stack (what `make run` starts)")
    commands.add_parser("down", help="stop the local stack and the fleet (`make stop`)")
    commands.add_parser(
        "doctor", add_help=False, help="check the running stack end to end (`make doctor`)"
    )
    return parser


def _stack(command: str, rest: list[str]) -> int:
    # Imported here: the local stack's tools are needed by these commands only.
    if command == "doctor":
        from deploy.doctor.__main__ import main as doctor

        return doctor(["--monitor", *rest])
    from deploy.localstack.__main__ import main as localstack

    return localstack([command])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["token"]:
        # Imported here: the token commands reach Kafka; `--version` needs none of it.
        from shared import token_cli

        return token_cli.main(args[1:])
    if args[:1] and args[0] in STACK_COMMANDS:
        return _stack(args[0], args[1:])
    parser = _parser()
    try:
        parsed = parser.parse_args(args)
        if parsed.command is None:
            parser.print_usage(sys.stderr)
            return USAGE
        return _run(parsed)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))  # exits with 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from shared.client import AsyncClient, StreamjobsError
    from shared.client.commands import COMMANDS, exit_code

    console, err = Console(), Console(stderr=True)
    command: Callable[..., Awaitable[int]] = COMMANDS[args.command]

    async def run() -> int:
        async with AsyncClient(args.url, args.token, ws_url=args.ws_url) as client:
            return await command(client, args, console, err)

    try:
        return asyncio.run(run())
    except StreamjobsError as exc:
        err.print(Text(f"streamjobs: {exc}", style="red"), soft_wrap=True)
        return exit_code(exc)


if __name__ == "__main__":
    raise SystemExit(main())
