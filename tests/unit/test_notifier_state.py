"""The notifier's pure state and hub: ordering, attempts, replay, authorisation, backpressure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from services.notifier import resume
from services.notifier.client import Client
from services.notifier.frames import Frame
from services.notifier.hub import Hub
from services.notifier.metrics import NotifierMetrics
from services.notifier.state import JobState
from shared.auth import Principal
from shared.contracts import (
    JobAccepted,
    JobAcceptedData,
    JobCompleted,
    JobCompletedData,
    JobStarted,
    JobStartedData,
    ModelConfig,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
)
from shared.topics import Priority

JOB = "job-1"


def chunk(seq: int, text: str | None = None, attempt: int = 1, job: str = JOB) -> TokenChunk:
    now = datetime.now(UTC)
    return TokenChunk(
        job_id=job,
        data=TokenChunkData(
            attempt=attempt,
            seq=seq,
            text=text if text is not None else f"t{seq} ",
            tokens=1,
            first_token_at=now,
            emitted_at=now,
        ),
    )


def accepted(user: str = "alice", job: str = JOB) -> JobAccepted:
    return JobAccepted(
        job_id=job,
        data=JobAcceptedData(
            user_id=user,
            prompt="p",
            job_type="analysis",
            priority=Priority.NORMAL,
            config=ModelConfig(),
            submitted_at=datetime.now(UTC),
        ),
    )


def completed(last_seq: int, attempt: int = 1, job: str = JOB) -> JobCompleted:
    return JobCompleted(
        job_id=job,
        data=JobCompletedData(
            attempt=attempt,
            response="r",
            model="m",
            usage=TokenUsage(),
            chunks=last_seq + 1,
            last_seq=last_seq,
            duration_ms=1.0,
        ),
    )


def started(attempt: int) -> JobStarted:
    return JobStarted(job_id=JOB, data=JobStartedData(attempt=attempt, worker="w"))


def decode(frames: list[Frame]) -> list[dict[str, object]]:
    return [json.loads(f.text) for f in frames]


def seqs(frames: list[Frame]) -> list[object]:
    return [m["seq"] for m in decode(frames) if m["type"] == "chunk"]


# -- JobState --------------------------------------------------------------------------------


def test_redelivered_and_stale_attempt_chunks_are_ignored() -> None:
    state = JobState(JOB)
    for seq in (0, 1, 1, 0, 2):
        state.apply_chunk(chunk(seq))
    state.apply_chunk(chunk(3, attempt=2))
    state.apply_chunk(chunk(4, attempt=1))  # the abandoned attempt's late record
    assert (state.attempt, state.first_seq, state.next_seq) == (2, 3, 4)


def test_new_attempt_restarts_the_stored_stream_from_seq_zero() -> None:
    state = JobState(JOB)
    for seq in range(3):
        state.apply_chunk(chunk(seq))
    state.apply_event(started(2), 0.0)
    assert state.chunks == [] and state.attempt == 2
    state.apply_chunk(chunk(0, "again", attempt=2))
    assert seqs(resume.replay(state, -1, None).frames) == [0]


def test_final_event_waits_for_the_chunks_it_names() -> None:
    state = JobState(JOB)
    state.apply_chunk(chunk(0))
    assert state.apply_event(completed(last_seq=2), 1.0) is None
    assert state.held is not None
    _, released = state.apply_chunk(chunk(1))
    assert released is None
    _, released = state.apply_chunk(chunk(2))
    assert released is not None and released.event == "job.completed"
    assert state.finished


def test_replay_sends_what_follows_last_seq_then_the_final_event() -> None:
    state = JobState(JOB)
    for seq in range(5):
        state.apply_chunk(chunk(seq))
    state.apply_event(completed(4), 1.0)
    replay = resume.replay(state, 2, 1)
    assert seqs(replay.frames) == [3, 4]
    assert replay.frames[-1].event == "job.completed"
    assert not replay.restarted and not replay.missing


def test_replay_for_another_attempt_restarts_from_seq_zero() -> None:
    state = JobState(JOB)
    for seq in range(3):
        state.apply_chunk(chunk(seq, attempt=2))
    replay = resume.replay(state, 7, 1)
    assert replay.restarted
    assert seqs(replay.frames) == [0, 1, 2]


def test_replay_reports_history_that_began_mid_attempt() -> None:
    state = JobState(JOB)
    state.apply_chunk(chunk(5))
    state.apply_chunk(chunk(6))
    assert resume.replay(state, 1, 1).missing
    assert not resume.replay(state, 4, 1).missing


def test_chunk_frame_is_encoded_once_with_its_sse_id() -> None:
    frame, _ = JobState(JOB).apply_chunk(chunk(0, "héllo"))
    assert frame is not None
    assert json.loads(frame.text)["text"] == "héllo"
    assert frame.sse.startswith(b"id: 1:0\nevent: chunk\ndata: ")
    assert frame.sse is frame.sse


# -- Hub -------------------------------------------------------------------------------------


def hub(**kwargs: float) -> Hub:
    return Hub(NotifierMetrics(CollectorRegistry()), **kwargs)  # type: ignore[arg-type]


def client(user: str = "alice", limit: int = 100, *scopes: str) -> Client:
    return Client(Principal(user, frozenset(scopes)), limit)


def queued(c: Client) -> list[dict[str, object]]:
    frames = list(c._frames)
    c.reset(())
    return decode(frames)


def test_subscribe_snapshot_and_live_chunks_join_without_gap_or_duplicate() -> None:
    h = hub()
    h.on_event(accepted(), 0.0)
    for seq in range(3):
        h.on_chunk(chunk(seq), 0.0)
    c = client()
    h.subscribe_job(c, JOB, 0, 1, 0.0)
    h.on_chunk(chunk(3), 0.0)
    msgs = queued(c)
    assert msgs[0]["type"] == "subscribed" and msgs[0]["last_seq"] == 2
    assert [m["seq"] for m in msgs[1:]] == [1, 2, 3]


def test_subscription_before_job_accepted_waits_then_attaches() -> None:
    h = hub(pending_s=5.0)
    c = client()
    h.on_chunk(chunk(0), 0.0)  # chunks may be read before the accepted event
    h.subscribe_job(c, JOB, -1, None, 0.0)
    assert queued(c) == []
    h.on_event(accepted(), 1.0)
    msgs = queued(c)
    assert [m["type"] for m in msgs] == ["subscribed", "chunk"]


def test_other_users_job_is_refused_after_the_same_wait_as_an_unknown_one() -> None:
    h = hub(pending_s=2.0)
    h.on_event(accepted("alice"), 0.0)
    known, unknown = client("mallory"), client("mallory")
    h.subscribe_job(known, JOB, -1, None, 0.0)
    h.subscribe_job(unknown, "nope", -1, None, 0.0)
    h.sweep(1.0)
    assert queued(known) == queued(unknown) == []
    h.sweep(2.0)
    a, b = queued(known), queued(unknown)
    assert a[0]["code"] == b[0]["code"] == "forbidden"
    assert a[0]["message"] == b[0]["message"]


def test_admin_may_subscribe_to_any_job() -> None:
    h = hub()
    h.on_event(accepted("alice"), 0.0)
    admin = client("ops", 100, "admin")
    h.subscribe_job(admin, JOB, -1, None, 0.0)
    assert queued(admin)[0]["type"] == "subscribed"


def test_overflowing_client_is_cleared_told_to_resync_and_others_keep_everything() -> None:
    h = hub(max_resyncs=1)
    h.on_event(accepted(), 0.0)
    slow, fast = client(limit=3), client(limit=1000)
    h.subscribe_job(slow, JOB, -1, None, 0.0)
    h.subscribe_job(fast, JOB, -1, None, 0.0)
    queued(slow)
    for seq in range(10):
        h.on_chunk(chunk(seq), 0.0)
    msgs = queued(slow)
    assert [m["type"] for m in msgs] == ["resync"]
    assert msgs[0]["last_seq"] == 3 and msgs[0]["attempt"] == 1
    assert len(slow.channels) == 0, "a resynced client gets no more live frames"
    assert seqs(list(fast._frames)) == list(range(10))


def test_client_that_keeps_overflowing_is_closed_with_4008() -> None:
    h = hub(max_resyncs=1)
    h.on_event(accepted(), 0.0)
    killed: list[int] = []
    slow = Client(Principal("alice", frozenset()), 2, kill=lambda code, _r: killed.append(code))
    for round_ in range(2):
        h.subscribe_job(slow, JOB, h.jobs[JOB].last_seq, 1, 0.0)
        for _ in range(4):
            h.on_chunk(chunk(h.jobs[JOB].next_seq), 0.0)
        assert killed == ([] if round_ == 0 else [4008])


def test_finished_jobs_are_evicted_after_their_ttl_and_the_job_count_is_capped() -> None:
    h = hub(ttl_s=10.0, max_jobs=3)
    h.on_event(accepted(), 0.0)
    h.on_chunk(chunk(0), 0.0)
    h.on_event(completed(0), 1.0)
    h.sweep(10.5)
    assert JOB in h.jobs
    h.sweep(11.0)
    assert JOB not in h.jobs
    for i in range(5):
        h.on_event(accepted(job=f"j{i}"), 0.0)
    assert list(h.jobs) == ["j2", "j3", "j4"]


def test_held_final_is_released_after_the_wait_even_if_chunks_never_come() -> None:
    h = hub(final_wait_s=2.0)
    h.on_event(accepted(), 0.0)
    c = client()
    h.subscribe_job(c, JOB, -1, None, 0.0)
    h.on_event(completed(last_seq=5), 0.0)
    h.sweep(1.0)
    assert [m["type"] for m in queued(c)] == ["subscribed"]
    h.sweep(2.0)
    assert [m.get("event") for m in queued(c)] == ["job.completed"]


def test_user_channel_gets_lifecycle_events_of_own_jobs_only() -> None:
    h = hub()
    c = client("alice")
    h.subscribe_user(c, "alice")
    h.on_event(accepted("bob", job="b"), 0.0)
    h.on_event(accepted("alice", job="a"), 0.0)
    h.on_chunk(chunk(0, job="a"), 0.0)
    msgs = queued(c)
    assert [(m["type"], m.get("job_id")) for m in msgs] == [("subscribed", None), ("event", "a")]


def test_client_resuming_past_what_was_read_does_not_get_those_chunks_twice() -> None:
    h = hub()
    h.on_event(accepted(), 0.0)  # the chunks topic is read behind the events topic
    c = client()
    h.subscribe_job(c, JOB, 4, 1, 0.0)
    for seq in range(7):
        h.on_chunk(chunk(seq), 0.0)
    assert seqs([Frame(m, "x") for m in [f.text for f in c._frames]]) == [5, 6]
    assert not h._ahead


def test_client_of_a_later_attempt_than_read_so_far_waits_for_it() -> None:
    h = hub()
    h.on_event(accepted(), 0.0)
    h.on_chunk(chunk(0, attempt=1), 0.0)
    c = client()
    h.subscribe_job(c, JOB, 1, 2, 0.0)
    h.on_chunk(chunk(1, attempt=1), 0.0)
    for seq in range(4):
        h.on_chunk(chunk(seq, attempt=2), 0.0)
    msgs = queued(c)
    assert [(m["attempt"], m["seq"]) for m in msgs if m["type"] == "chunk"] == [(2, 2), (2, 3)]
