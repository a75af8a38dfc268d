"""The doctor's pure parts: check lines, exit code, version parsing, topics, the live stream
and the round-trip verdict."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.doctor.report import (
    Check,
    LiveStream,
    exit_code,
    java_check,
    java_major,
    progress_line,
    python_check,
    readyz_check,
    round_trip_verdict,
    summary,
    topics_check,
)
from deploy.doctor.settings import DoctorSettings
from shared.topics import all_topics


def chunk(seq: int, text: str, attempt: int = 1, tokens: int = 1) -> dict[str, Any]:
    return {"type": "chunk", "attempt": attempt, "seq": seq, "text": text, "tokens": tokens}


def completed(response: str, last_seq: int, attempt: int = 1) -> dict[str, Any]:
    return {
        "type": "event",
        "event": "job.completed",
        "data": {"attempt": attempt, "response": response, "last_seq": last_seq},
    }


def streamed(*frames: dict[str, Any]) -> LiveStream:
    stream = LiveStream()
    for i, frame in enumerate(frames):
        stream.on_frame(frame, now=float(i))
    return stream


STORED = {"status": "completed", "response": "Hello world", "usage": {"completion_tokens": 2}}


def test_passed_check_is_one_line_without_its_hint() -> None:
    assert Check("Kafka reachable", True, "127.0.0.1:9092", hint="start it").line() == (
        "✓ Kafka reachable — 127.0.0.1:9092"
    )


def test_failed_check_prints_its_hint_on_the_next_line() -> None:
    line = Check("LLM endpoint", False, "HTTP 401", hint="check OPENAI_API_KEY").line()
    assert line == "✗ LLM endpoint — HTTP 401\n    hint: check OPENAI_API_KEY"


def test_exit_code_is_zero_only_when_every_check_passed() -> None:
    assert exit_code([Check("a", True), Check("b", True)]) == 0
    assert exit_code([Check("a", True), Check("b", False)]) == 1
    assert exit_code([]) == 1
    assert summary([Check("a", True), Check("b", False)]) == "1 of 2 checks failed: b"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_java_major_version_is_read_from_java_version_output(
    output: str, major: int | None
) -> None:
    assert java_major(output) == major


def test_java_below_17_or_missing_fails_with_the_install_hint() -> None:
    assert java_check('openjdk version "17.0.15"').ok
    old = java_check('java version "1.8.0_392"')
    assert not old.ok
    assert "make system-deps" in old.hint
    assert not java_check(None).ok


def test_python_below_311_fails() -> None:
    assert python_check((3, 11, 7)).ok
    assert not python_check((3, 10, 12)).ok


def test_topics_pass_when_all_exist_with_one_partition_count() -> None:
    check = topics_check("sj", all_topics("sj"), dict.fromkeys(all_topics("sj"), 4))
    assert check.ok
    assert check.detail == "11 topics sj.*, 4 partitions each"


def test_topics_fail_naming_the_missing_ones() -> None:
    partitions = dict.fromkeys(all_topics("sj"), 4)
    del partitions["sj.chunks"]
    partitions["sj.control"] = 0
    check = topics_check("sj", all_topics("sj"), partitions)
    assert not check.ok
    assert check.detail == "missing sj.control, sj.chunks"


def test_topics_fail_when_bands_differ_in_partitions() -> None:
    partitions = dict.fromkeys(all_topics("sj"), 4)
    partitions["sj.jobs.low"] = 2
    check = topics_check("sj", all_topics("sj"), partitions)
    assert not check.ok
    assert "low 2" in check.detail


def test_readyz_names_the_failing_dependencies() -> None:
    url = "http://127.0.0.1:8081/readyz"
    assert readyz_check("results", url, 200, {"checks": {"db": True}}).ok
    down = readyz_check("results", url, 503, {"checks": {"db": False, "kafka": True}})
    assert not down.ok
    assert down.detail.endswith("HTTP 503, failing: db")
    refused = readyz_check("results", url, None, None, "ConnectionRefusedError()")
    assert not refused.ok
    assert "ConnectionRefusedError" in refused.detail


def test_live_stream_orders_chunks_and_ignores_duplicates() -> None:
    stream = streamed(chunk(1, " world"), chunk(0, "Hello"), chunk(1, " world"))
    assert stream.text == "Hello world"
    assert stream.duplicates == 1
    assert stream.tokens == 2
    assert stream.gaps() == []


def test_live_stream_restarts_on_a_new_attempt_and_drops_late_old_frames() -> None:
    stream = streamed(chunk(0, "Hel", 1), chunk(0, "Hello", 2), chunk(1, "late", 1))
    assert stream.attempt == 2
    assert stream.text == "Hello"
    assert stream.restarts == 1


def test_round_trip_passes_when_stream_event_and_stored_result_agree() -> None:
    stream = streamed(chunk(0, "Hello"), chunk(1, " world"), completed("Hello world", 1))
    verdict = round_trip_verdict("j1", stream, STORED)
    assert verdict.ok, verdict.detail
    assert "2 chunks" in verdict.detail


def test_round_trip_fails_on_a_gap_in_the_stream() -> None:
    stream = streamed(chunk(0, "Hello"), chunk(2, "!"), completed("Hello world!", 2))
    verdict = round_trip_verdict("j1", stream, {**STORED, "response": "Hello!"})
    assert not verdict.ok
    assert "chunks missing: seq [1]" in verdict.detail


def test_round_trip_fails_when_the_stored_result_differs() -> None:
    stream = streamed(chunk(0, "Hello"), chunk(1, " world"), completed("Hello world", 1))
    verdict = round_trip_verdict("j1", stream, {**STORED, "response": "Hello"})
    assert not verdict.ok
    assert "stored response (5 chars) differs from the streamed text (11 chars)" in verdict.detail
    assert not round_trip_verdict("j1", stream, None).ok


def test_round_trip_fails_with_the_reason_of_a_failed_job() -> None:
    failed = {"type": "event", "event": "job.failed", "data": {"error": "upstream 500"}}
    verdict = round_trip_verdict("j1", streamed(chunk(0, "Hi"), failed), None)
    assert not verdict.ok
    assert verdict.detail == "job j1 ended job.failed: upstream 500"


def test_round_trip_fails_without_a_final_event() -> None:
    verdict = round_trip_verdict("j1", streamed(chunk(0, "Hi")), None)
    assert not verdict.ok
    assert "no final event" in verdict.detail


def test_progress_line_shows_tokens_rate_and_elapsed() -> None:
    stream = LiveStream()
    stream.on_frame(chunk(0, "a", tokens=1), now=10.0)
    stream.on_frame(chunk(1, "b", tokens=99), now=11.0)
    line = progress_line(stream, elapsed_s=1.5, now=12.0)
    assert line == "  streaming: 100 tokens, 50.0 tokens/s, 2 chunks, 1.5 s elapsed"


def test_settings_derive_each_service_ops_url() -> None:
    settings = DoctorSettings(
        streamjobs_url="http://gw:9000/",
        streamjobs_ws_url="wss://ws.example:443/ws",
        results_url="http://res:9001",
        streamer_port=9003,
    )
    assert settings.service_urls() == {
        "gateway": "http://gw:9000",
        "results": "http://res:9001",
        "notifier": "https://ws.example:443",
        "streamer": "http://127.0.0.1:9003",
    }
