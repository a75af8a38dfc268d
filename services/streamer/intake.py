"""Kafka intake of jobs: one group consumer per source, offsets committed once jobs are final."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from services.streamer.claims import Claims
from services.streamer.claims_log import ClaimsSource
from services.streamer.job import Running
from services.streamer.offsets import OffsetTracker
from services.streamer.rejects import Rejected
from services.streamer.sticky import StickyAssignor
from shared.contracts import RunJob, parse_record
from shared.deadletter import MAX_JOB_ID_CHARS

log = logging.getLogger(__name__)

# How long one read of an assignment's committed offsets may take before it is tried again.
COMMITTED_TIMEOUT_S = 5.0

# Called with a job parsed from a record; the intake tracks its offset until `done`.
Offer = Callable[[Running, int], None]
# Called with a record that cannot be run; returns once it is dead-lettered and its
# failure published (retrying Kafka errors itself), so its offset may then be committed.
DeadLetter = Callable[[Rejected], Awaitable[None]]


# ConsumerRecord.timestamp_type of a record stamped by the broker on append.
LOG_APPEND_TIME = 1


class Unrunnable(Exception):
    """A job record the streamer cannot run; trying it again would not help."""

    retriable = False


class WrongType(Unrunnable):
    """A valid record of another type than RunJob on a job topic."""


def check_runnable(job: RunJob, now: datetime, max_delay_s: float) -> None:
    """Raise `Unrunnable` for what validation lets through but the streamer cannot run."""
    if not job.job_id or len(job.job_id) > MAX_JOB_ID_CHARS:
        raise Unrunnable(f"job id must be 1 to {MAX_JOB_ID_CHARS} characters")
    data = job.data
    if data.submitted_at.tzinfo is None:
        raise Unrunnable("submitted_at has no time zone")
    if data.accept_by is not None and data.accept_by.tzinfo is None:
        raise Unrunnable("accept_by has no time zone")
    not_before = data.not_before
    if not_before is not None:
        if not_before.tzinfo is None:
            raise Unrunnable("not_before has no time zone")
        # Its offset stays uncommitted while it waits: a far-off time would hold the partition.
        if (not_before - now).total_seconds() > max_delay_s:
            raise Unrunnable(f"not_before is more than {max_delay_s:g} s ahead")


def appended_too_late(job: RunJob, timestamp_ms: int, timestamp_type: int, skew_s: float) -> bool:
    """Whether a first attempt reached the broker after the gateway had given up on it.

    Judged only by the broker's append time (LogAppendTime, type 1), `skew_s` past the
    deadline: the gateway's clock may differ from the broker's, and a job the gateway
    acknowledged must never be dropped. CreateTime records and records without a deadline run.
    """
    accept_by = job.data.accept_by
    if accept_by is None or timestamp_type != LOG_APPEND_TIME or job.data.attempt != 1:
        return False
    return timestamp_ms / 1000 > accept_by.timestamp() + skew_s


def consumed_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset after what `consumer` returned of `tp` (control records included), if known.

    aiokafka's `position()` waits for a position it does not have yet (a partition just
    assigned); its subscription state answers at once.
    """
    subscription = getattr(consumer, "_subscription", None)
    current = getattr(subscription, "subscription", None)
    assignment = getattr(current, "assignment", None)
    state = assignment.state_value(tp) if assignment is not None else None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.intake.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.intake.assigned(set(assigned))


class Intake:
    """Reads RunJob records of some topics in a consumer group and hands them on by band.

    Partitions of a band pause while `backlog(rank)` reaches `prefetch`, so memory stays
    bounded while a higher band's partitions keep being fetched, and while `held_back(band)`
    says its jobs could not start or must wait for a higher band's. After every fetch,
    `seen(tp)` says how far records were handed on and `on_progress` is called.
    """

    def __init__(
        self,
        name: str,
        consumer: AIOKafkaConsumer,
        topics: list[str],
        rank_of_topic: Callable[[str, RunJob], int],
        offer: Offer,
        dead_letter: DeadLetter,
        backlog: Callable[[int], int],
        prefetch: int,
        on_revoke: Callable[[set[TopicPartition]], Awaitable[None]],
        admin: AIOKafkaAdminClient,
        group_id: str,
        claims_source: ClaimsSource,
        *,
        on_claims: Callable[[int, int, float], None] = lambda _claims, _events, _s: None,
        assignor: StickyAssignor | None = None,
        running_partitions: Callable[[str], set[TopicPartition]] = lambda _source: set(),
        on_kept: Callable[[int], None] = lambda _jobs: None,
        max_delay_s: float = 3600.0,
        accept_skew_s: float = 1.0,
        on_late: Callable[[], None] = lambda: None,
        on_kafka_error: Callable[[], None] = lambda: None,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        held_back: Callable[[int], bool] = lambda _band: False,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.held_back = held_back
        self.on_progress = on_progress
        # Per assigned partition: the offset after the records handed on (control records
        # included), known once the partition was fetched in this assignment.
        self._seen: dict[TopicPartition, int] = {}
        self.max_delay_s = max_delay_s
        self.accept_skew_s = accept_skew_s
        self.on_late = on_late
        self.on_kafka_error = on_kafka_error
        self.backoff_s = backoff_s
        self.admin = admin
        self.group_id = group_id
        self.claims_source = claims_source
        self.on_claims = on_claims
        self.assignor = assignor
        self.running_partitions = running_partitions
        self.on_kept = on_kept
        # Partitions whose jobs stay ours across a rebalance until an assignment leaves them
        # out; the sticky assignor gives none of them to another member meanwhile.
        self._held: set[TopicPartition] = set()
        # Whether the current generation was assigned by the sticky assignor: only then may
        # the next revocation keep its jobs (a round-robin peer could take them at once).
        self._sticky = False
        self._claims_read: asyncio.Task[None] | None = None
        # Attempts started (ours, and those read from the events topic on assignment).
        self.claims = Claims()
        # Per partition: offset -> job id of the records handed on and not final yet.
        self._offered: dict[TopicPartition, dict[int, str]] = {}
        # No record is taken until the claims of the current assignment are read.
        self._claims_ready = asyncio.Event()
        self._generation = 0  # one more at every revocation: older fetches are stale
        self._stopping = False
        self.name = name
        self.consumer = consumer
        self.topics = topics
        self.rank_of = rank_of_topic
        self.offer = offer
        self.dead_letter = dead_letter
        self.backlog = backlog
        self.prefetch = prefetch
        self.on_revoke = on_revoke
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self._commit_wanted = asyncio.Event()
        self._band_of_topic: dict[str, int] = {}

    def subscribe(self, band_of_topic: dict[str, int]) -> None:
        self._band_of_topic = band_of_topic
        self.consumer.subscribe(self.topics, listener=_Revocations(self))

    def bands(self) -> dict[TopicPartition, int]:
        """The assigned partitions, each with its band."""
        return {
            tp: band
            for tp in self.consumer.assignment()
            if (band := self._band_of_topic.get(tp.topic)) is not None
        }

    def seen(self, tp: TopicPartition) -> int | None:
        """How far the records of `tp` were handed on, if it was fetched since assigned."""
        return self._seen.get(tp)

    def ready(self) -> bool:
        return bool(self.consumer.assignment()) and self._claims_ready.is_set()

    async def stop(self) -> None:
        """Leave the group; a claims read still retrying gives up."""
        self._stopping = True
        await self._cancel_claims_read()
        await self.consumer.stop()

    async def lag(self) -> dict[str, int]:
        """Records per topic not yet finished: from the oldest unfinished one to the high mark."""
        out: dict[str, int] = {}
        assigned = list(self.consumer.assignment())
        if not assigned:
            return out
        # Asked of the broker: a paused partition has no fresh high-water mark of its own.
        ends = await self.consumer.end_offsets(assigned)
        for tp, high in ends.items():
            position = self.offsets.position(tp)
            if position is None:
                position = await self.consumer.position(tp)
            out[tp.topic] = out.get(tp.topic, 0) + max(0, high - position)
        return out

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.offsets.done(tp, offset)
        job_id = self._offered.get(tp, {}).pop(offset, None)
        if job_id is not None:
            self.claims.forget(job_id)
        self._commit_wanted.set()

    def started(self, tp: TopicPartition, offset: int, job_id: str, attempt: int) -> None:
        """Remember our own start; its job.started event is what a successor reads."""
        self.claims.started(job_id, attempt)

    def held(self) -> set[TopicPartition]:
        """What this member holds: its partitions, and those of jobs still running here."""
        return self._held | self.running_partitions(self.name)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """Cut the jobs of partitions not assigned back, then read the new ones' claims.

        Every claim on the assigned partitions is read before any of their jobs is taken.
        """
        self._sticky = self.assignor is not None and self.assignor.chosen
        lost = self.held() - assigned
        if lost:
            await self._let_go(lost, still_assigned=False)
        kept = self._held & assigned
        if kept:
            self.on_kept(sum(self.offsets.inflight(tp) for tp in kept))
        for tp in kept:
            # Its records up to here run or ran here: fetch on after them, not from the commit.
            resume = self.offsets.fetched(tp)
            if resume is not None:
                self.consumer.seek(tp, resume)
        self._held = set(assigned) if self._sticky else set()
        log.info(
            "%s: %d partitions assigned (%s), %d kept, %d let go",
            self.name,
            len(assigned),
            "sticky" if self._sticky else "round robin",
            len(kept),
            len(lost),
        )
        if lost and self._sticky:
            # Given to nobody while we held them: a new generation hands them on.
            self._request_rejoin()
        if not assigned:
            self._claims_ready.set()
            return
        # Read outside the callback: a member stuck in it misses the next rebalance's join
        # and is evicted while its kept jobs still run. The fetch waits for it instead.
        self._claims_read = asyncio.create_task(self._read_claims(assigned))
        self._claims_read.add_done_callback(_log_crash)

    async def _read_claims(self, assigned: set[TopicPartition]) -> None:
        """Read every claim on the assigned partitions, then let the fetch take their jobs."""
        first_delay, max_delay = self.backoff_s
        delay = first_delay
        began = time.monotonic()
        while True:
            try:
                # Bounded: an admin request to a coordinator that is moving may never answer,
                # and the fetch of every assigned partition waits for this read.
                async with asyncio.timeout(COMMITTED_TIMEOUT_S):
                    committed = await self.admin.list_consumer_group_offsets(
                        self.group_id, partitions=sorted(assigned)
                    )
                # No commit yet (-1): the group starts at the earliest record.
                positions = {
                    tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in assigned
                }
                claims, events = await self.claims_source.load(positions)
                break
            except (KafkaError, TimeoutError) as exc:
                if self._stopping:
                    return  # the consumer is closing: nothing will be taken anyway
                # Running a job without its claims could repeat an attempt number: wait.
                self.on_kafka_error()
                log.warning("%s: could not read claims (%r); retry in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
        self.claims.replace(claims)
        self.on_claims(len(claims), events, time.monotonic() - began)
        self._claims_ready.set()

    async def _cancel_claims_read(self) -> None:
        task, self._claims_read = self._claims_read, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop taking records; commit what is final before the group reassigns.

        Under the sticky assignor the running jobs go on: this member sends their
        partitions as held, so no other member gets them until an assignment leaves them
        out here and `assigned` has cut them. Otherwise they stop now, before the callback
        returns, so that the partitions' next owner starts after.
        """
        self._generation += 1
        self._seen.clear()  # until fetched again in the next assignment
        self._claims_ready.clear()
        await self._cancel_claims_read()  # of the previous assignment: it is gone
        if self.assignor is not None:
            self.assignor.chosen = False  # set again only if the next generation is sticky
        if not self._sticky:
            self._held = set()
            await self._let_go(
                set(revoked) | self.running_partitions(self.name), still_assigned=True
            )
            return
        await self._commit()

    async def _let_go(self, lost: set[TopicPartition], *, still_assigned: bool) -> None:
        """Cut the jobs of `lost` partitions, commit what is final, forget them.

        Partitions no longer assigned cannot be committed (aiokafka refuses the whole
        commit): what finished on them since the revocation is skipped by their next
        owner, whose claims say it ended.
        """
        await self.on_revoke(lost)
        if still_assigned:
            await self._commit()
        for tp in lost:
            self.offsets.forget(tp)
            self._offered.pop(tp, None)
        if not still_assigned:
            await self._commit()

    def _request_rejoin(self) -> None:
        # aiokafka has no public call for this: the coordinator's own trigger, as a
        # metadata change uses it.
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is not None:
            coordinator.request_rejoin()

    def _pause_held_bands(self) -> None:
        assigned = self.consumer.assignment()
        paused = self.consumer.paused()
        for tp in assigned:
            band = self._band_of_topic.get(tp.topic)
            if band is None:
                continue
            hold = self.backlog(band) >= self.prefetch or self.held_back(band)
            if hold and tp not in paused:
                self.consumer.pause(tp)
            elif not hold and tp in paused:
                self.consumer.resume(tp)

    async def fetch_loop(self) -> None:
        consumer = self.consumer
        first_delay, max_delay = self.backoff_s
        delay = first_delay
        while True:
            # Before the fetch, not after: records a fetch returns across a rebalance may
            # belong to partitions since lost, or be re-fetched on kept ones.
            await self._claims_ready.wait()
            try:
                self._pause_held_bands()
                generation = self._generation
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
            except KafkaError as exc:
                # The loop outlives a broker hiccup; what was not fetched is fetched later.
                self.on_kafka_error()
                log.warning("%s: fetch failed (%r); retry in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            delay = first_delay
            for tp, records in batch.items():
                taken = self.offsets.fetched(tp)
                for record in records:
                    if self._generation != generation:
                        # Revoked meanwhile: the next owner (maybe us) fetches it again.
                        self._fetch_again(tp, record.offset)
                        break
                    if taken is not None and record.offset < taken:
                        continue  # taken before a rebalance that kept its partition here
                    self.offsets.track(tp, record.offset)
                    await self._take(tp, record)
            if self._generation == generation:
                self._note_seen()
                self.on_progress()

    def _fetch_again(self, tp: TopicPartition, offset: int) -> None:
        """Put the fetch back to a record skipped because a rebalance came while it was fetched.

        A fetch that began before the revocation can return records of the next assignment:
        aiokafka has then moved that assignment's position past them, and without a seek
        they would wait, untaken, until yet another rebalance. Records of the old assignment
        need nothing: the new one starts again from its commit, which is not past them.
        """
        if tp not in self.consumer.assignment():
            return
        position = consumed_position(self.consumer, tp)
        if position is not None and position > offset:
            self.consumer.seek(tp, offset)

    def _note_seen(self) -> None:
        """After a fetch was handed on: how far each assigned partition is read now."""
        for tp in self.consumer.assignment():
            position = consumed_position(self.consumer, tp)
            if position is not None:
                self._seen[tp] = position

    async def _take(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        offset, key, value = record.offset, record.key, record.value

        def rejected(reason: str, error_type: str) -> Rejected:
            return Rejected(key, value, reason, error_type, tp.topic, tp.partition, offset)

        try:
            parsed = parse_record(value or b"")
            if not isinstance(parsed, RunJob):
                raise WrongType(f"unexpected record type {parsed.type!r}")  # noqa: TRY301
            check_runnable(parsed, datetime.now(UTC), self.max_delay_s)
        except ValidationError as exc:
            errors = exc.errors()
            reason = f"invalid record: {errors[0]['msg'] if errors else exc}"
            await self._reject(rejected(reason, "ValidationError"), tp, offset)
            return
        except Unrunnable as exc:
            await self._reject(rejected(str(exc), type(exc).__name__), tp, offset)
            return
        except Exception as exc:  # a record boundary: nothing read from Kafka may stop the loop
            log.exception(
                "%s: record %s[%d]@%d broke the intake", self.name, tp.topic, tp.partition, offset
            )
            await self._reject(rejected(repr(exc), type(exc).__name__), tp, offset)
            return
        if appended_too_late(parsed, record.timestamp, record.timestamp_type, self.accept_skew_s):
            # The gateway answered 503 and voids it: the cancel may not be read in time.
            self.on_late()
            log.warning(
                "%s: job %s reached the broker after its accept_by; not run",
                self.name,
                parsed.job_id,
                extra={"job_id": parsed.job_id, "trace_id": parsed.trace_id},
            )
            self.done(tp, offset)
            return
        attempt = self.claims.attempt_to_run(parsed.job_id, parsed.data.attempt)
        if attempt is None:
            # It ended already, or went on as a retry: a previous owner did not commit it.
            log.info("job %s was settled elsewhere; not run again", parsed.job_id)
            self.done(tp, offset)
            return
        if attempt != parsed.data.attempt:
            # A previous owner stopped mid-attempt: this run is the next attempt.
            parsed = parsed.model_copy(
                update={"data": parsed.data.model_copy(update={"attempt": attempt})}
            )
            log.info("job %s was started elsewhere; running attempt %d", parsed.job_id, attempt)
        self._offered.setdefault(tp, {})[offset] = parsed.job_id
        running = Running(job=parsed, source=self.name, tp=tp, offset=offset)
        not_before = parsed.data.not_before
        if not_before is not None:
            running.due = time.monotonic() + (not_before - datetime.now(UTC)).total_seconds()
        self.offer(running, self.rank_of(tp.topic, parsed))

    async def _reject(self, rejected: Rejected, tp: TopicPartition, offset: int) -> None:
        # Only once the DLQ and the events topic have it may the offset move past it.
        await self.dead_letter(rejected)
        self.done(tp, offset)

    async def commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit()

    async def _commit(self) -> None:
        advanced = self.offsets.committable()
        offsets = {tp: OffsetAndMetadata(position, "") for tp, position in advanced.items()}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partition: the new owner re-runs what we could not commit.
            log.warning("%s: commit of %s failed: %r", self.name, offsets, exc)

    async def final_commit(self) -> None:
        with contextlib.suppress(KafkaError):
            await self._commit()


def _log_crash(task: asyncio.Task[None]) -> None:
    # The fetch of the assignment waits for this read: a bug in it must at least be seen.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a claims read crashed: %r", exc, exc_info=exc)
