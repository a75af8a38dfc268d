"""The dispatch loop over fake ports: slots by band, delayed retries, crashes and reruns."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from services.streamer.dispatch import RETRY_BAND
from shared.topics import Priority
from tests.support import wait_for
from tests.unit.streamer_fakes import TP, make_running, streamer


async def test_an_admitted_job_runs_and_its_offset_is_claimed_then_released() -> None:
    async with streamer() as s:
        s.dispatcher.admit(make_running("j1", offset=7), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        assert "j1" in s.inflight.running
        assert s.ledger.claims == [(7, "j1", 1)]
        s.upstream.finish("j1")
        await wait_for(lambda: s.ledger.released == [7], message="the offset was released")
        assert "j1" not in s.inflight.running
        assert s.dispatcher.scheduler.in_use == 0


async def test_a_launched_job_carries_the_time_its_slot_was_given() -> None:
    async with streamer() as s:
        running, before = make_running("j1", offset=7), datetime.now(UTC)
        s.dispatcher.admit(running, Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        assert running.slot_at is not None
        assert before <= running.slot_at <= datetime.now(UTC)


async def test_the_free_slot_goes_to_the_most_urgent_band_waiting() -> None:
    async with streamer(slots=1) as s:
        s.dispatcher.admit(make_running("first", offset=0), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the first job started")
        s.dispatcher.admit(make_running("low", offset=1), Priority.LOW.rank)
        s.dispatcher.admit(make_running("urgent", offset=2), Priority.URGENT.rank)
        assert s.dispatcher.backlog(Priority.LOW.rank) == 1
        s.upstream.finish("first")
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="a second job started")
        assert s.upstream.started_ids() == ["first", "urgent"]


async def test_a_retry_fetched_before_its_time_waits_until_due() -> None:
    async with streamer() as s:
        running = make_running("later")
        running.due = time.monotonic() + 0.2
        s.dispatcher.admit(running, Priority.NORMAL.rank)
        assert s.dispatcher.backlog(RETRY_BAND) == 1
        assert not s.upstream.attempts
        await wait_for(lambda: s.upstream.attempts, message="the retry started once due")
        assert time.monotonic() >= running.due
        assert s.dispatcher.backlog(RETRY_BAND) == 0


async def test_a_crashed_attempt_is_reported_as_internal_and_its_offset_released() -> None:
    async with streamer() as s:
        s.dispatcher.admit(make_running("j1", offset=3), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        s.upstream.finish("j1", raising=ValueError("a bug"))
        await wait_for(lambda: s.ledger.released == [3], message="the offset was released")
        assert s.events.crashes == [("j1", "ValueError('a bug')")]


async def test_an_attempt_lost_to_kafka_runs_again_as_the_next_once_kafka_answers() -> None:
    async with streamer(kafka_failures=2) as s:
        s.dispatcher.admit(make_running("j1", offset=5), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the job started")
        s.upstream.finish("j1", raising=KafkaConnectionError("broker away"))
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="the job ran again")
        assert s.upstream.attempts == [("j1", 1), ("j1", 2)]
        assert s.kafka.probes == 3, "it waited until Kafka answered"
        assert s.ledger.released == [], "the offset stays in flight"
        assert s.metric("streamjobs_streamer_attempts_lost_to_kafka_total") == 1
        s.upstream.finish("j1")
        await wait_for(lambda: s.ledger.released == [5], message="the rerun released it")


async def test_revoked_partitions_drop_waiting_jobs_and_cut_running_ones_before_returning() -> None:
    async with streamer(slots=1) as s:
        s.dispatcher.admit(make_running("first", offset=0), Priority.NORMAL.rank)
        await wait_for(lambda: s.upstream.attempts, message="the first job started")
        s.dispatcher.admit(make_running("waiting", offset=1), Priority.NORMAL.rank)
        held = make_running("held", offset=2)
        held.due = time.monotonic() + 60
        s.dispatcher.admit(held, Priority.NORMAL.rank)
        await s.dispatcher.drop_revoked({TP})
        assert s.dispatcher.backlog(Priority.NORMAL.rank) == 0
        assert s.dispatcher.backlog(RETRY_BAND) == 0
        assert "first" not in s.inflight.running, "the running job stopped before the return"
        assert s.ledger.released == [], "a cut attempt is not final: its offset stays"
        assert s.metric("streamjobs_streamer_attempts_cut_by_rebalance_total") == 1
        other = make_running("other", offset=0)
        other.tp = TopicPartition("jobs", 1)
        s.dispatcher.admit(other, Priority.NORMAL.rank)
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="its slot was freed")
        assert s.upstream.started_ids() == ["first", "other"]


async def test_a_job_launched_just_before_a_revocation_still_frees_its_slot() -> None:
    async with streamer(slots=1) as s:
        s.dispatcher.admit(make_running("first", offset=0), Priority.NORMAL.rank)
        await s.dispatcher.drop_revoked({TP})
        other = make_running("other", offset=0)
        other.tp = TopicPartition("jobs", 1)
        s.dispatcher.admit(other, Priority.NORMAL.rank)
        await wait_for(lambda: "other" in s.upstream.started_ids(), message="the slot was freed")
