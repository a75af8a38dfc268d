"""Which job a cancel hits, over fake ports: running, waiting, or not fetched yet."""

from __future__ import annotations

from shared.topics import Priority
from tests.support import wait_for
from tests.unit.streamer_fakes import cancel_by, make_running, streamer


async def test_a_cancel_before_the_fetch_skips_the_job_when_it_arrives() -> None:
    async with streamer() as s:
        s.cancels.on_cancel("j1", cancel_by("alice"))
        assert len(s.cancels.pending) == 1
        s.dispatcher.admit(make_running("j1", offset=4), Priority.NORMAL.rank)
        await wait_for(lambda: s.ledger.released == [4], message="the offset was released")
        assert [job_id for job_id, _ in s.events.cancelled_jobs] == ["j1"]
        assert not s.upstream.attempts, "a cancelled job takes no slot"
        assert len(s.cancels.pending) == 0


async def test_a_strangers_early_cancel_does_not_skip_the_job() -> None:
    async with streamer() as s:
        s.cancels.on_cancel("j1", cancel_by("mallory"))
        s.dispatcher.admit(make_running("j1"), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        assert not s.events.cancelled_jobs


async def test_a_cancel_of_a_job_waiting_for_a_slot_skips_it_at_once() -> None:
    async with streamer(slots=1) as s:
        s.dispatcher.admit(make_running("first", offset=0), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the first job started")
        s.dispatcher.admit(make_running("waiting", offset=1), Priority.NORMAL.rank)
        s.cancels.on_cancel("waiting", cancel_by("root", admin=True))
        await wait_for(lambda: s.ledger.released == [1], message="the waiting job was skipped")
        assert [job_id for job_id, _ in s.events.cancelled_jobs] == ["waiting"]
        assert s.dispatcher.backlog(Priority.NORMAL.rank) == 0
        assert len(s.cancels.pending) == 0, "nothing left to remember"


async def test_the_owners_cancel_reaches_the_running_job_and_a_strangers_does_not() -> None:
    async with streamer() as s:
        running = make_running("j1")
        s.dispatcher.admit(running, Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        s.cancels.on_cancel("j1", cancel_by("mallory"))
        assert running.cancel is None
        assert s.metric("streamjobs_streamer_cancels_ignored_total") == 1
        owners = cancel_by("alice")
        s.cancels.on_cancel("j1", owners)
        assert running.cancel is owners


async def test_a_later_record_claiming_another_owner_keeps_the_first_owner() -> None:
    async with streamer() as s:
        s.dispatcher.admit(make_running("j1", user="alice", offset=0), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the first record started")
        s.upstream.finish("j1")
        await wait_for(lambda: s.ledger.released == [0], message="the first record ended")
        forged = make_running("j1", user="mallory", offset=1)
        s.dispatcher.admit(forged, Priority.NORMAL.rank)
        assert forged.owner == "alice"


async def test_the_cancelled_event_of_a_skipped_job_is_retried_until_kafka_takes_it() -> None:
    async with streamer(cancel_failures=2) as s:
        s.cancels.on_cancel("j1", cancel_by("alice"))
        s.dispatcher.admit(make_running("j1", offset=9), Priority.NORMAL.rank)
        await wait_for(lambda: s.ledger.released == [9], message="the offset was released")
        assert len(s.events.cancelled_jobs) == 1
        counted = s.registry.get_sample_value(
            "streamjobs_streamer_jobs_cancelled_total",
            {"job_type": "analysis", "priority": "normal"},
        )
        assert counted == 1
