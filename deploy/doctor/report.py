"""The doctor's pure parts: check results and how they print, the live stream of one job,
and the verdict of its round trip. No I/O here, so all of it is unit-tested."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.topics import job_topics

OK_MARK = "✓"
FAIL_MARK = "✗"
FINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    hint: str = ""  # what to do about a failure; printed only when it failed

    def line(self) -> str:
        """One line: mark, name, detail; a failed check adds its hint on the next line."""
        text = f"{OK_MARK if self.ok else FAIL_MARK} {self.name}"
        if self.detail:
            text += f" — {self.detail}"
        if not self.ok and self.hint:
            text += f"\n    hint: {self.hint}"
        return text


def exit_code(checks: Iterable[Check]) -> int:
    """0 only when every check passed (and there was at least one)."""
    results = list(checks)
    return 0 if results and all(c.ok for c in results) else 1


def summary(checks: Iterable[Check]) -> str:
    results = list(checks)
    failed = [c.name for c in results if not c.ok]
    if not failed:
        return f"all {len(results)} checks passed"
    return f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}"


_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


def java_major(version_output: str) -> int | None:
    """The major version from `java -version` output (`1.8.0_x` is 8, `17.0.15` is 17)."""
    m = _JAVA_VERSION.search(version_output)
    if m is None:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):
        return int(m.group(2))
    return major


def python_check(version: tuple[int, int, int], minimum: tuple[int, int] = (3, 11)) -> Check:
    text = ".".join(map(str, version))
    return Check(
        "Python",
        version[:2] >= minimum,
        text,
        hint=f"streamjobs needs Python {minimum[0]}.{minimum[1]}+ (make install builds .venv)",
    )


def java_check(version_output: str | None, minimum: int = 17) -> Check:
    hint = (
        f"install Java {minimum}+ (make system-deps: openjdk-17-jre-headless); "
        "the local Kafka needs it"
    )
    if version_output is None:
        return Check("Java", False, "java not found on PATH", hint)
    major = java_major(version_output)
    if major is None:
        return Check("Java", False, f"cannot read {version_output.strip()[:60]!r}", hint)
    return Check("Java", major >= minimum, f"Java {major}", hint)


def topics_check(prefix: str, expected: list[str], partitions: Mapping[str, int]) -> Check:
    """Every expected topic exists with partitions; the band topics share one count."""
    missing = [t for t in expected if partitions.get(t, 0) < 1]
    if missing:
        return Check(
            "Kafka topics",
            False,
            f"missing {', '.join(missing)}",
            "the services create their topics at start: start them (make run) "
            "or check TOPIC_PREFIX",
        )
    bands = {t: partitions[t] for t in job_topics(prefix)}
    if len(set(bands.values())) > 1:
        shown = ", ".join(f"{t.rsplit('.', 1)[-1]} {n}" for t, n in bands.items())
        return Check(
            "Kafka topics",
            False,
            f"band topics differ in partitions ({shown})",
            "every band topic needs the same partition count so each streamer owns "
            "partitions of every band",
        )
    counts = sorted({partitions[t] for t in expected})
    each = f"{counts[0]} partitions each" if len(counts) == 1 else f"{counts} partitions"
    return Check("Kafka topics", True, f"{len(expected)} topics {prefix}.*, {each}")


def readyz_check(name: str, url: str, status: int | None, body: Any, error: str = "") -> Check:
    label = f"{name} ready"
    hint = f"see its log (make logs); GET {url} says which dependency is missing"
    if status is None:
        return Check(label, False, f"{url}: {error or 'no answer'}", hint)
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    failing = sorted(k for k, v in checks.items() if not v)
    if status == 200:
        return Check(label, True, url)
    detail = f"{url}: HTTP {status}" + (f", failing: {', '.join(failing)}" if failing else "")
    return Check(label, False, detail, hint)


@dataclass
class LiveStream:
    """What a WebSocket client saw of one job: the current attempt's text, in order."""

    attempt: int = 0
    texts: dict[int, str] = field(default_factory=dict)  # seq -> text of `attempt`
    tokens: int = 0
    duplicates: int = 0
    restarts: int = 0
    final: dict[str, Any] | None = None
    first_chunk_at: float | None = None

    def on_frame(self, msg: Mapping[str, Any], now: float) -> None:
        kind = msg.get("type")
        if kind == "chunk":
            self._on_chunk(msg, now)
        elif kind == "event" and msg.get("event") in FINAL_EVENTS:
            self.final = dict(msg)

    def _on_chunk(self, msg: Mapping[str, Any], now: float) -> None:
        attempt, seq = int(msg["attempt"]), int(msg["seq"])
        if attempt < self.attempt:
            return  # a late frame of an abandoned attempt
        if attempt > self.attempt:
            if self.attempt:
                self.restarts += 1
            self.attempt, self.texts, self.tokens = attempt, {}, 0
        if seq in self.texts:
            self.duplicates += 1
            return
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        self.texts[seq] = str(msg["text"])
        self.tokens += int(msg.get("tokens") or 0)

    @property
    def done(self) -> bool:
        return self.final is not None

    @property
    def text(self) -> str:
        return "".join(self.texts[s] for s in sorted(self.texts))

    def gaps(self) -> list[int]:
        """Sequence numbers missing between 0 and the highest seen."""
        if not self.texts:
            return []
        return [s for s in range(max(self.texts) + 1) if s not in self.texts]


def progress_line(stream: LiveStream, elapsed_s: float, now: float) -> str:
    """`--monitor`: tokens so far, tokens/s since the first chunk, elapsed time."""
    rate = 0.0
    if stream.first_chunk_at is not None and now > stream.first_chunk_at:
        rate = stream.tokens / (now - stream.first_chunk_at)
    attempt = f", attempt {stream.attempt}" if stream.attempt > 1 else ""
    return (
        f"  streaming: {stream.tokens} tokens, {rate:.1f} tokens/s, "
        f"{len(stream.texts)} chunks{attempt}, {elapsed_s:.1f} s elapsed"
    )


def round_trip_verdict(job_id: str, stream: LiveStream, result: Mapping[str, Any] | None) -> Check:
    """Did the job complete, arrive whole and in order, and match what was stored?"""
    name = "job round trip"
    final = stream.final
    if final is None:
        return Check(
            name,
            False,
            f"job {job_id}: no final event over the WebSocket ({stream.tokens} tokens seen)",
            "is a streamer running and ready? is the LLM answering? (see the checks above)",
        )
    if final.get("event") != "job.completed":
        data = final.get("data") or {}
        reason = data.get("error") or data.get("reason") or data
        return Check(
            name,
            False,
            f"job {job_id} ended {final.get('event')}: {reason}",
            "the streamer log has the job id; GET /api/v1/jobs/{id} shows its error",
        )
    problems: list[str] = []
    data = final.get("data") or {}
    gaps = stream.gaps()
    if gaps:
        problems.append(f"chunks missing: seq {gaps[:5]}")
    if stream.duplicates:
        problems.append(f"{stream.duplicates} duplicate chunks")
    if "last_seq" in data and stream.texts and max(stream.texts) != data["last_seq"]:
        problems.append(
            f"last chunk seq {max(stream.texts)} but the job ended at {data['last_seq']}"
        )
    if "response" in data and data["response"] != stream.text:
        problems.append("the streamed text differs from the completed event's response")
    if result is None:
        problems.append("no stored result")
    else:
        if result.get("status") != "completed":
            problems.append(f"stored status {result.get('status')}")
        if result.get("response") != stream.text:
            problems.append(
                f"stored response ({len(result.get('response') or '')} chars) differs from "
                f"the streamed text ({len(stream.text)} chars)"
            )
    if problems:
        return Check(
            name,
            False,
            f"job {job_id}: " + "; ".join(problems),
            "the notifier or the results service lost or reordered records: "
            "check their logs for the job id",
        )
    usage = (result or {}).get("usage") or {}
    return Check(
        name,
        True,
        f"job {job_id}: {len(stream.texts)} chunks, {usage.get('completion_tokens', stream.tokens)}"
        " tokens, stored result matches the stream"
        + (f" (after {stream.restarts} restart(s))" if stream.restarts else ""),
    )
