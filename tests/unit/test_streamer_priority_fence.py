"""The priority fence over fakes: a job below the top band starts only once every higher
band's records, as far as Kafka had them just before, were fetched."""

from __future__ import annotations

from aiokafka import TopicPartition

from services.streamer.fence import unseen
from shared.topics import Priority
from tests.support import wait_for
from tests.unit.streamer_fakes import FakeBands, make_running, streamer

URGENT, HIGH, NORMAL, LOW = (p.rank for p in Priority)
U0 = TopicPartition("jobs.urgent", 0)
H0 = TopicPartition("jobs.high", 0)
N0 = TopicPartition("jobs.normal", 0)


def fetched_up_to_kafka() -> FakeBands:
    """An urgent, a high and a normal partition, each read as far as Kafka has it."""
    return FakeBands(
        bands={U0: URGENT, H0: HIGH, N0: NORMAL},
        seen={U0: 5, H0: 5, N0: 9},
        ends={U0: 5, H0: 5, N0: 9},
    )


def test_partitions_read_short_of_their_end_are_unseen_unless_their_band_has_jobs_waiting() -> None:
    higher = {U0: URGENT, H0: HIGH}
    ends = {U0: 6, H0: 4}
    seen = {U0: 5, H0: 4}
    assert unseen(ends, higher, seen.get, lambda _band: 0) == [U0]
    assert unseen(ends, higher, seen.get, lambda band: int(band == URGENT)) == []
    assert unseen(ends, higher, {}.get, lambda _band: 0) == [U0, H0], "never fetched yet"


async def test_a_normal_job_starts_once_kafka_says_no_higher_record_is_left_to_fetch() -> None:
    async with streamer(bands=fetched_up_to_kafka()) as s:
        s.dispatcher.admit(make_running("normal"), NORMAL)
        await wait_for(lambda: s.upstream.attempts, message="the normal job started")
        assert s.bands.reads == 1
        assert s.metric("streamjobs_streamer_priority_fence_checks_total") == 1


async def test_urgent_jobs_start_without_asking_kafka() -> None:
    async with streamer(slots=2, bands=fetched_up_to_kafka()) as s:
        s.dispatcher.admit(make_running("u1", priority=Priority.URGENT), URGENT)
        s.dispatcher.admit(make_running("u2", priority=Priority.URGENT, offset=1), URGENT)
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="both urgent jobs started")
        assert s.bands.reads == 0


async def test_a_normal_job_waits_for_an_urgent_record_the_intake_has_not_fetched() -> None:
    bands = fetched_up_to_kafka()
    bands.ends[U0] = 6  # an urgent record reached Kafka; the intake has not read it yet
    async with streamer(bands=bands) as s:
        s.dispatcher.admit(make_running("normal"), NORMAL)
        await wait_for(
            lambda: s.metric("streamjobs_streamer_priority_fence_holds_total") == 1,
            message="the fence held the normal job",
        )
        assert s.dispatcher.holds_back(NORMAL), "the fetch brings the urgent band first"
        assert s.dispatcher.holds_back(Priority.LOW.rank)
        assert not s.dispatcher.holds_back(URGENT)
        assert not s.dispatcher.holds_back(HIGH)
        assert not s.upstream.attempts
        # The intake fetches the urgent record and hands it on.
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=1), URGENT)
        bands.seen[U0] = 6
        s.fence.progressed()
        await wait_for(lambda: s.upstream.attempts, message="a job started")
        assert s.upstream.started_ids() == ["urgent"]
        assert not s.dispatcher.holds_back(NORMAL), "the hold ended with the fetch"
        s.upstream.finish("urgent")
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="the normal job started")
        assert s.upstream.started_ids() == ["urgent", "normal"]


async def test_every_start_below_the_top_band_asks_kafka_again() -> None:
    async with streamer(bands=fetched_up_to_kafka()) as s:
        s.dispatcher.admit(make_running("first"), NORMAL)
        s.dispatcher.admit(make_running("second", offset=1), NORMAL)
        await wait_for(lambda: s.upstream.attempts, message="the first job started")
        # An urgent record arrives while the first job runs: the next start must see it.
        s.bands.ends[U0] = 6
        s.upstream.finish("first")
        await wait_for(
            lambda: s.metric("streamjobs_streamer_priority_fence_holds_total") == 1,
            message="the second start asked again and was held",
        )
        assert s.upstream.started_ids() == ["first"]
        assert s.bands.reads == 2


async def test_a_low_job_also_waits_for_the_normal_band() -> None:
    bands = fetched_up_to_kafka()
    bands.ends[N0] = 10
    async with streamer(slots=2, bands=bands) as s:
        s.dispatcher.admit(make_running("high", priority=Priority.HIGH), HIGH)
        s.dispatcher.admit(make_running("low", priority=Priority.LOW, offset=1), LOW)
        await wait_for(lambda: s.upstream.attempts, message="the high job started")
        await wait_for(
            lambda: s.metric("streamjobs_streamer_priority_fence_holds_total") == 1,
            message="the low job was held for the normal record",
        )
        assert s.upstream.started_ids() == ["high"], "one read served the high job's start"
        bands.seen[N0] = 10
        s.fence.progressed()
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="the low job started")


async def test_a_failed_read_of_the_ends_is_retried_before_a_lower_job_starts() -> None:
    bands = fetched_up_to_kafka()
    bands.failures = 2
    async with streamer(bands=bands) as s:
        s.dispatcher.admit(make_running("normal"), NORMAL)
        await wait_for(lambda: s.upstream.attempts, message="the normal job started")
        assert bands.reads == 3
