"""Resume-from-seq rules: what a client that saw up to `last_seq` of `attempt` gets."""

from __future__ import annotations

import json

from services.notifier import resume
from services.notifier.client import Client
from services.notifier.frames import Frame
from services.notifier.state import JobState
from shared.auth import Principal
from tests.unit.test_notifier_state import JOB, chunk, completed, seqs


def streamed(count: int, attempt: int = 1, first: int = 0) -> JobState:
    state = JobState(JOB, owner="alice")
    for seq in range(first, first + count):
        state.apply_chunk(chunk(seq, attempt=attempt))
    return state


def types(frames: list[Frame]) -> list[object]:
    return [json.loads(f.text)["type"] for f in frames]


def client() -> Client:
    return Client(Principal("alice", frozenset()), 100)


def test_a_new_client_gets_every_chunk_held() -> None:
    assert seqs(resume.replay(streamed(3), -1, None).frames) == [0, 1, 2]


def test_a_client_up_to_date_gets_nothing_but_the_final_event_if_any() -> None:
    state = streamed(3)
    assert resume.replay(state, 2, 1).frames == []
    state.apply_event(completed(2), 1.0)
    assert [f.event for f in resume.replay(state, 2, 1).frames] == ["job.completed"]


def test_no_attempt_means_the_current_one() -> None:
    state = streamed(4, attempt=2)
    owed = resume.replay(state, 1, None)
    assert seqs(owed.frames) == [2, 3] and not owed.restarted


def test_a_client_of_an_older_attempt_restarts_at_seq_zero() -> None:
    owed = resume.replay(streamed(2, attempt=3), 9, 2)
    assert owed.restarted and seqs(owed.frames) == [0, 1]


def test_a_client_of_a_later_attempt_than_read_gets_nothing_yet_and_is_ahead() -> None:
    state = streamed(2, attempt=1)
    owed = resume.replay(state, 0, 2)
    assert owed.frames == [] and not owed.restarted and not owed.missing
    assert resume.is_ahead(state, 0, 2)


def test_a_client_past_the_last_seq_read_is_ahead_one_behind_is_not() -> None:
    state = streamed(3)
    assert resume.is_ahead(state, 3, 1) and resume.is_ahead(state, 3, None)
    assert not resume.is_ahead(state, 2, 1)
    assert not resume.is_ahead(state, 7, 0), "an older attempt is behind whatever its seq"


def test_chunks_before_the_history_held_are_missing() -> None:
    state = streamed(2, first=5)
    assert resume.replay(state, 3, 1).missing
    assert not resume.replay(state, 4, 1).missing


def test_a_job_known_only_by_its_owner_has_its_history_missing() -> None:
    state = JobState(JOB, owner="alice", partial=True, status="completed")
    owed = resume.replay(state, 4, 1)
    assert owed.missing and owed.frames == []


def test_the_answer_is_subscribed_then_a_resync_when_history_lacks_then_the_replay() -> None:
    state = streamed(2, first=5)
    frames = resume.answer(state, -1, None)
    assert types(frames) == ["subscribed", "resync", "chunk", "chunk"]
    head, gap = json.loads(frames[0].text), json.loads(frames[1].text)
    assert (head["channel"], head["last_seq"], head["restarted"]) == (f"job:{JOB}", 6, False)
    assert (gap["reason"], gap["first_seq"]) == ("history unavailable", 5)


def test_the_answer_to_a_client_of_an_older_attempt_says_restarted() -> None:
    frames = resume.answer(streamed(1, attempt=2), 3, 1)
    assert types(frames) == ["subscribed", "chunk"]
    assert json.loads(frames[0].text)["restarted"] is True


def test_live_chunks_a_client_ahead_already_has_are_skipped_until_it_is_caught_up() -> None:
    state = streamed(2)
    ahead, c, other = resume.Ahead(), client(), client()
    ahead.note(c, state, 3, 1)
    ahead.note(other, state, 1, 1)  # not ahead: not noted
    subs = {c, other}
    assert ahead.skip(chunk(2), ahead.by_job[JOB], subs) == {other}
    assert ahead.skip(chunk(3), ahead.by_job[JOB], subs) == {other}
    assert JOB not in ahead.by_job, "caught up: forgotten"


def test_a_client_ahead_by_attempt_skips_the_older_attempt_and_gets_the_new_one() -> None:
    state = streamed(1, attempt=1)
    ahead, c = resume.Ahead(), client()
    ahead.note(c, state, 0, 2)
    assert ahead.skip(chunk(1, attempt=1), ahead.by_job[JOB], {c}) == set()
    assert ahead.skip(chunk(1, attempt=2), ahead.by_job[JOB], {c}) == {c}
    assert not ahead.by_job


def test_a_client_that_leaves_or_a_job_evicted_is_forgotten() -> None:
    state = streamed(1)
    ahead, c = resume.Ahead(), client()
    ahead.note(c, state, 5, 1)
    ahead.forget(c, JOB)
    assert ahead.by_job[JOB] == {}
    ahead.forget_job(JOB)
    assert not ahead.by_job
