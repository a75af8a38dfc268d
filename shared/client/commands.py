"""The job commands of `streamjobs` (parsed in `shared.cli`): each takes the client, the parsed
arguments and the consoles (stdout, stderr), and returns the exit status."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from shared.api import JobAcceptedView
from shared.client import console as show
from shared.client.aio import AsyncClient
from shared.client.errors import (
    ApiError,
    CannotConnect,
    Forbidden,
    NotFound,
    StreamjobsError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from shared.client.stream import Chunk
from shared.contracts import ModelConfig
from shared.lifecycle import JobStatus

EXIT_OK = 0  # done; a followed job completed
EXIT_FAILED = 1  # the job failed
EXIT_USAGE = 2  # bad arguments, or a request the API refused as invalid
EXIT_CANCELLED = 3  # the job was cancelled
EXIT_DENIED = 4  # no such job, or not allowed (bad token, missing scope)
EXIT_UNREACHABLE = 5  # the gateway or the notifier cannot be reached (or is unavailable)
EXIT_REFUSED = 6  # any other refusal: rate limited, conflict
OUTCOME_EXIT = {
    JobStatus.COMPLETED: EXIT_OK,
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.CANCELLED: EXIT_CANCELLED,
}

Command = Callable[[AsyncClient, argparse.Namespace, Console, Console], Awaitable[int]]


def exit_code(error: StreamjobsError) -> int:
    if isinstance(error, ValidationFailed):
        return EXIT_USAGE
    if isinstance(error, NotFound | Unauthorized | Forbidden):
        return EXIT_DENIED
    if isinstance(error, CannotConnect | Unavailable):
        return EXIT_UNREACHABLE
    return EXIT_REFUSED if isinstance(error, ApiError) else EXIT_UNREACHABLE


def outcome(status: JobStatus | None) -> int:
    """A job's exit status: by how it ended; 0 while it has not."""
    return OUTCOME_EXIT.get(status, EXIT_OK) if status is not None else EXIT_OK


def metadata(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a VALUE that is JSON (a number, true, an object) is read as JSON."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--meta {pair!r}: use KEY=VALUE")
        try:
            values[key] = json.loads(value)
        except ValueError:
            values[key] = value
    return values


async def submit(client: AsyncClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    config = {
        name: value
        for name, value in (
            ("model", args.model),
            ("max_tokens", args.max_tokens),
            ("temperature", args.temperature),
        )
        if value is not None
    }
    job = await client.submit(
        args.prompt,
        job_type=args.job_type,
        priority=args.priority,
        config=config or None,
        metadata=metadata(args.meta) or None,
        idempotency_key=args.idempotency_key,
    )
    if not args.follow:
        if args.json:
            out.print_json(job.model_dump_json())
        else:
            out.print(job.job_id, highlight=False)
        return EXIT_OK
    err.print(f"job {job.job_id} ({job.job_type}, {job.priority.value})", highlight=False)
    return await _follow(client, job, out, err, args.max_tokens or ModelConfig().max_tokens)


async def follow(client: AsyncClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    job = await client.get(args.job_id)
    total = job.progress.max_tokens if job.progress is not None else None
    return await _follow(client, job.job_id, out, err, total)


async def _follow(
    client: AsyncClient,
    job: str | JobAcceptedView,
    out: Console,
    err: Console,
    max_tokens: int | None,
) -> int:
    with show.LiveView(out, err, max_tokens) as view:
        async for item in client.follow(job):
            if isinstance(item, Chunk):
                view.chunk(item)
            else:
                view.event(item)
                if item.final:
                    view.close()
                    return outcome(item.status)
    return EXIT_UNREACHABLE  # follow ends on the final event or raises: not reached


def _show(out: Console, as_json: bool, model: BaseModel, view: Callable[[Any], Any]) -> None:
    """The model as JSON (`--json`), or as `view` draws it."""
    if as_json:
        out.print_json(model.model_dump_json())
    else:
        out.print(view(model))


async def status(client: AsyncClient, args: argparse.Namespace, out: Console, _: Console) -> int:
    job = await client.get(args.job_id)
    _show(out, args.json, job, show.job_view)
    return outcome(job.status)


async def cancel(client: AsyncClient, args: argparse.Namespace, out: Console, _: Console) -> int:
    answer = await client.cancel(args.job_id)
    if args.json:
        out.print_json(answer.model_dump_json())
    else:
        out.print(f"cancel sent: job {answer.job_id} was {answer.status.value}", highlight=False)
    return EXIT_OK


async def retry(client: AsyncClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    job = await client.retry(args.job_id, idempotency_key=args.idempotency_key)
    if not args.follow:
        if args.json:
            out.print_json(job.model_dump_json())
        else:
            out.print(job.job_id, highlight=False)
        return EXIT_OK
    err.print(f"job {job.job_id} retries {args.job_id}", highlight=False)
    # The new job asks what the original did; the read side may not hold the new one yet.
    original = await client.get(args.job_id)
    total = original.progress.max_tokens if original.progress is not None else None
    return await _follow(client, job, out, err, total)


async def result(client: AsyncClient, args: argparse.Namespace, out: Console, _: Console) -> int:
    stored = await client.result(args.job_id, wait_s=args.wait)
    _show(out, args.json, stored, show.result_view)
    return outcome(stored.status)


async def jobs(client: AsyncClient, args: argparse.Namespace, out: Console, _: Console) -> int:
    if args.limit < 1:
        raise argparse.ArgumentTypeError("--limit must be at least 1")
    found = []
    listed = client.list(
        page_size=min(args.limit, 200),
        status=args.status,
        job_type=args.job_type,
        priority=args.priority,
        user_id=args.user,
    )
    async with aclosing(listed):
        async for job in listed:
            found.append(job)
            if len(found) >= args.limit:
                break
    if args.json:
        for job in found:
            out.print(job.model_dump_json(), highlight=False, soft_wrap=True)
    else:
        out.print(show.jobs_table(found))
    return EXIT_OK


async def analytics(client: AsyncClient, args: argparse.Namespace, out: Console, _: Console) -> int:
    figures = await client.analytics(
        since=args.since,
        until=args.until,
        group_by=[key.strip() for key in args.group_by.split(",") if key.strip()],
        bucket=args.bucket,
    )
    _show(out, args.json, figures, show.analytics_table)
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "submit": submit,
    "follow": follow,
    "status": status,
    "cancel": cancel,
    "retry": retry,
    "result": result,
    "jobs": jobs,
    "analytics": analytics,
}
