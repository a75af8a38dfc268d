"""The client's pure parts: where a follower stands, errors by status, where it connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.client.commands import (
    EXIT_CANCELLED,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code,
    metadata,
    outcome,
)
from shared.client.config import DEFAULT_URL, read_env_file, resolve
from shared.client.errors import (
    ApiError,
    CannotConnect,
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    from_answer,
)
from shared.client.follow import Backoff
from shared.client.stream import Event, Gap, Position
from shared.lifecycle import JobStatus


def test_a_position_hands_on_each_chunk_once_in_order() -> None:
    at = Position()
    first = at.accept("j", 1, 0, "a", 1)
    assert first is not None and not first.replaces
    assert at.accept("j", 1, 1, "b", 1) is not None
    assert at.accept("j", 1, 1, "b", 1) is None  # a replay overlapping what was handed on
    assert at.accept("j", 1, 0, "a", 1) is None
    assert (at.attempt, at.last_seq) == (1, 1)
    assert at.subscribe("j") == {
        "type": "subscribe",
        "channel": "job:j",
        "last_seq": 1,
        "attempt": 1,
    }
    assert at.last_event_id == "1:1"


def test_a_new_attempt_replaces_the_text_and_an_old_one_is_ignored() -> None:
    at = Position()
    at.accept("j", 1, 0, "old", 1)
    restarted = at.accept("j", 2, 0, "new", 1)
    assert restarted is not None and restarted.replaces and restarted.attempt == 2
    assert at.accept("j", 1, 1, "late", 1) is None


def test_a_missing_chunk_is_a_gap_not_a_silent_hole() -> None:
    at = Position()
    at.accept("j", 1, 0, "a", 1)
    with pytest.raises(Gap):
        at.accept("j", 1, 2, "c", 1)
    with pytest.raises(Gap):
        at.accept("j", 2, 3, "x", 1)  # a new attempt must start at seq 0
    assert (at.attempt, at.last_seq) == (1, 0)


def test_a_position_before_any_chunk_subscribes_from_the_start() -> None:
    at = Position()
    assert at.subscribe("j") == {"type": "subscribe", "channel": "job:j", "last_seq": -1}
    assert at.last_event_id == "0:-1"
    jumped = at.jump("j", 1, 9, "text so far", 10)
    assert jumped.replaces and (at.attempt, at.last_seq) == (1, 9)
    assert at.is_behind(1, 10) and not at.is_behind(1, 9)


def test_final_events_are_told_by_the_lifecycle_table() -> None:
    assert Event("j", "job.completed", {}).final
    assert Event("j", "job.cancelled", {}).status is JobStatus.CANCELLED
    assert not Event("j", "job.retrying", {}).final
    assert not Event("j", "job.something_new", {}).final


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ValidationFailed),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (422, ValidationFailed),
        (418, ApiError),
    ],
)
def test_problem_answers_map_to_typed_exceptions(status: int, kind: type[ApiError]) -> None:
    body = {"type": "https://streamjobs.dev/problems/some-kind", "title": "T", "detail": "D"}
    error = from_answer(status, body, {})
    assert type(error) is kind
    assert (error.status, error.kind, error.title, error.detail) == (status, "some-kind", "T", "D")


def test_rate_limits_and_unavailability_carry_retry_after() -> None:
    limited = from_answer(429, {"title": "Too many requests"}, {"Retry-After": "7"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0 and limited.retriable
    busy = from_answer(503, None, {})
    assert isinstance(busy, Unavailable) and busy.retry_after is None and busy.kind == "http-503"


def test_validation_errors_list_where_the_body_was_wrong() -> None:
    error = from_answer(422, {"errors": [{"loc": ["prompt"], "msg": "too short"}]}, {})
    assert isinstance(error, ValidationFailed)
    assert error.errors == [{"loc": ["prompt"], "msg": "too short"}]


def test_exit_codes_by_outcome_and_by_error() -> None:
    assert outcome(JobStatus.COMPLETED) == EXIT_OK
    assert outcome(JobStatus.FAILED) == EXIT_FAILED
    assert outcome(JobStatus.CANCELLED) == EXIT_CANCELLED
    assert outcome(JobStatus.RUNNING) == EXIT_OK
    assert exit_code(from_answer(422, {}, {})) == EXIT_USAGE
    assert exit_code(from_answer(404, {}, {})) == EXIT_DENIED
    assert exit_code(from_answer(401, {}, {})) == EXIT_DENIED
    assert exit_code(from_answer(403, {}, {})) == EXIT_DENIED
    assert exit_code(from_answer(503, {}, {})) == EXIT_UNREACHABLE
    assert exit_code(CannotConnect("down")) == EXIT_UNREACHABLE
    assert exit_code(from_answer(429, {}, {})) == EXIT_REFUSED
    assert exit_code(from_answer(409, {}, {})) == EXIT_REFUSED


def test_metadata_pairs_read_json_values_and_keep_other_text() -> None:
    assert metadata(["team=infra", "n=3", 'tags=["a"]']) == {"team": "infra", "n": 3, "tags": ["a"]}


def test_backoff_doubles_up_to_its_longest_pause() -> None:
    backoff = Backoff(first=0.1, longest=1.0)
    assert [backoff.pause(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


STACK_ENV = """export STREAMJOBS_URL='http://127.0.0.1:18080'
export STREAMJOBS_TOKEN='sj1.file'
export STREAMJOBS_WS_URL='ws://127.0.0.1:18082/ws'
export DATABASE_URL='postgresql://x'
"""


def test_arguments_win_over_the_environment_which_wins_over_stack_env(tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text(STACK_ENV)
    env = {"STREAMJOBS_STATE_DIR": str(tmp_path), "STREAMJOBS_TOKEN": "sj1.env"}
    found = resolve(environ=env)
    assert found.url == "http://127.0.0.1:18080"
    assert found.token == "sj1.env"
    assert found.ws_url == "ws://127.0.0.1:18082/ws"
    given = resolve("http://gw.example/", "sj1.arg", environ=env)
    assert (given.url, given.token) == ("http://gw.example", "sj1.arg")


def test_without_any_setting_the_local_default_url_and_no_token(tmp_path: Path) -> None:
    found = resolve(environ={"STREAMJOBS_STATE_DIR": str(tmp_path)})
    assert (found.url, found.token, found.ws_url) == (DEFAULT_URL, "", None)


def test_a_stack_env_file_is_read_as_a_shell_would(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    path.write_text(STACK_ENV + "# a comment\nexport STREAMJOBS_TOKEN='broken\n")
    assert read_env_file(path)["STREAMJOBS_TOKEN"] == "sj1.file"
    assert "DATABASE_URL" not in read_env_file(path)
    assert read_env_file(tmp_path / "absent.env") == {}
