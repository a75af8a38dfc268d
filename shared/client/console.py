"""How the `streamjobs` command shows things: rich tables of jobs, results and analytics, and
the live view of a followed job (its text, a bar of tokens against max_tokens, tokens/s).

On a terminal the text streams above the bar; into a pipe or a file the text alone goes to
stdout as it arrives (so `streamjobs submit --follow ... > out.txt` keeps the exact text) and
the notes go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from shared.api import Analytics, AnalyticsRow, JobResult, JobView
from shared.client.stream import Chunk, Event

STATUS_STYLE = {
    "queued": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
BAR_LINES = 3  # what the live view keeps below the text: a blank line, the bar, a margin


def _status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


def _ms(value: float | None) -> str:
    return f"{value:,.0f} ms" if value is not None else ""


def jobs_table(jobs: Iterable[JobView]) -> Table:
    table = Table(title="jobs, newest first", title_justify="left")
    for name in ("job id", "status", "type", "priority", "attempt", "model", "submitted"):
        table.add_column(name, no_wrap=name == "job id")
    table.add_column("tokens", justify="right")
    table.add_column("error")
    for job in jobs:
        table.add_row(
            job.job_id,
            _status(job.status.value),
            job.job_type,
            job.priority.value,
            str(job.attempt),
            job.model or "",
            _when(job.submitted_at),
            f"{job.progress.tokens}/{job.progress.max_tokens}" if job.progress else "",
            job.error or "",
        )
    return table


def _pairs(title: str, pairs: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in pairs:
        if value not in (None, "", {}):
            table.add_row(name, value if isinstance(value, Text) else str(value))
    return table


def job_view(job: JobView) -> Table:
    progress = job.progress
    return _pairs(
        f"job {job.job_id}",
        [
            ("status", _status(job.status.value)),
            ("type", job.job_type),
            ("priority", job.priority.value),
            ("attempt", job.attempt),
            ("model", job.model),
            ("user", job.user_id),
            ("submitted", _when(job.submitted_at)),
            ("started", _when(job.started_at)),
            ("finished", _when(job.finished_at)),
            ("queue position", job.queue_position),
            ("waited", _ms(job.waited_ms)),
            ("tokens", f"{progress.tokens}/{progress.max_tokens}" if progress else None),
            ("error", job.error),
            ("metadata", json.dumps(job.metadata) if job.metadata else None),
        ],
    )


def result_view(result: JobResult) -> Group:
    usage = result.usage
    body = (
        json.dumps(result.parsed_response, indent=2)
        if result.parsed_response is not None
        else result.response or ""
    )
    figures = _pairs(
        f"result of {result.job_id}",
        [
            ("status", _status(result.status.value)),
            ("type", result.job_type),
            ("model", result.model),
            ("attempt", result.attempt),
            ("finish reason", result.finish_reason),
            (
                "tokens",
                f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion"
                f" = {usage.total_tokens}" + (" (estimated)" if result.usage_estimated else ""),
            ),
            ("cost", f"${result.estimated_cost_usd:.6f}"),
            ("queue wait", _ms(result.queue_wait_ms)),
            ("first token", _ms(result.time_to_first_token_ms)),
            ("processing", _ms(result.processing_time_ms)),
            (
                "tokens/s",
                f"{result.tokens_per_second:.1f}" if result.tokens_per_second else None,
            ),
            ("severities", result.severity_breakdown),
            ("error", result.error),
            ("parse error", result.parse_error),
        ],
    )
    return Group(figures, Panel(body, title="response", title_align="left"))


def _percentiles(p: Any) -> str:
    return "/".join("-" if v is None else f"{v:,.0f}" for v in (p.p50, p.p95, p.p99))


def analytics_table(figures: Analytics) -> Table:
    keys = list(figures.group_by)
    table = Table(
        title=f"analytics {_when(figures.since)} .. {_when(figures.until)} (ms: p50/p95/p99)",
        title_justify="left",
    )
    for key in keys:
        table.add_column(key)
    for name in ("jobs", "success", "queue wait", "first token", "duration", "tokens", "cost"):
        table.add_column(name, justify="right")

    def add(row: AnalyticsRow, label: list[str]) -> None:
        success = f"{row.success_rate:.0%}" if row.success_rate is not None else ""
        table.add_row(
            *label,
            str(row.jobs),
            success,
            _percentiles(row.queue_wait_ms),
            _percentiles(row.time_to_first_token_ms),
            _percentiles(row.duration_ms),
            f"{row.total_tokens:,}",
            f"${row.cost_usd:.4f}",
        )

    for row in figures.rows:
        add(row, [_group_value(row, key) for key in keys])
    if keys:
        table.add_section()
    add(figures.totals, ["total", *[""] * (len(keys) - 1)] if keys else [])
    return table


def _group_value(row: AnalyticsRow, key: str) -> str:
    value = getattr(row, key)
    if key == "bucket":
        return _when(value)
    return "" if value is None else str(getattr(value, "value", value))


class _Tail:
    """The end of the text that fits above the bar; all of it once the job has ended."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = list(Text("".join(self.view.parts)).wrap(console, options.max_width))
        if not self.view.ended:
            lines = lines[-max(console.size.height - BAR_LINES, 1) :]
        yield from lines


class LiveView:
    """A followed job as it streams: `chunk`/`event` for each item, `close` at the end."""

    def __init__(self, console: Console, err: Console, max_tokens: int | None) -> None:
        self.console = console
        self.err = err
        self.parts: list[str] = []
        self.tokens = 0
        # The rate counts the tokens after the first chunk over the time since it came: the
        # wait for the first token is not streaming, and one token over ~0 s is no rate.
        self.started: float | None = None
        self.first_tokens = 0
        self.ending = ""
        self.ended = False
        self.tty = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TextColumn("{task.fields[rate]:>7.1f} tok/s"),
            console=console,
            auto_refresh=False,
        )
        self.task: TaskID = self.progress.add_task("attempt 1", total=max_tokens, rate=0.0)
        self.live = (
            Live(
                Group(_Tail(self), Text(""), self.progress),
                console=console,
                refresh_per_second=8,
                vertical_overflow="visible",
            )
            if self.tty
            else None
        )

    def __enter__(self) -> LiveView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        return (self.tokens - self.first_tokens) / elapsed if elapsed > 0 else 0.0

    def chunk(self, chunk: Chunk) -> None:
        if chunk.replaces:
            self.note(f"attempt {chunk.attempt}: the text starts over")
            self.parts, self.tokens, self.started = [], 0, None
        if self.started is None:
            self.started, self.first_tokens = time.monotonic(), chunk.tokens
        self.parts.append(chunk.text)
        self.tokens += chunk.tokens
        self.progress.update(
            self.task, description=f"attempt {chunk.attempt}", completed=self.tokens, rate=self.rate
        )
        if self.live is None:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()

    def event(self, event: Event) -> None:
        if event.event == "job.retrying":
            self.note(f"retrying: {event.data.get('reason', '')}")
        elif event.final:
            reason = event.data.get("reason") or event.data.get("error")
            self.ending = event.event + (f": {reason}" if reason else "")

    def note(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(Text(text, style="dim"))  # above the live area
        else:
            self.err.print(text)

    def close(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.progress.update(self.task, rate=self.rate)
        if self.live is not None:
            self.live.stop()  # its last render: the whole text and the final bar
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.err.print(f"{self.tokens} tokens, {self.rate:.1f} tok/s", highlight=False)
        if self.ending:
            self.err.print(self.ending, highlight=False)
