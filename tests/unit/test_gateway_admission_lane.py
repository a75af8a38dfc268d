"""An owned admission partition's queue: requests leave it in offset order, one that did not
commit comes back first, none is queued twice, and its producers take turns."""

from __future__ import annotations

from typing import Any, cast

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.gateway.admission_lane import Direct, Lane, Record
from services.gateway.admission_records import AdmissionRequest
from shared.topics import Priority


def record(offset: int) -> Record:
    return ConsumerRecord(
        topic="p.admissions",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=1,
        key=b"user",
        value=b"{}",
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=2,
        headers=[],
    )


def direct(request_id: str) -> Direct:
    request = AdmissionRequest(
        request_id=request_id,
        reply_to="gateway-0",
        user_id="user",
        job_id="job",
        keyed=False,
        digest="ab" * 16,
        job_type="analysis",
        priority=Priority.NORMAL,
        submitted_at=0.0,
        accept_by=5.0,
        accepted={},
        run={},
        trace_id="0" * 32,
    )
    return Direct(request, 0.0)


def lane(producers: int = 2) -> Lane:
    fakes: tuple[Any, ...] = tuple(object() for _ in range(producers))
    return Lane(0, cast(tuple[AIOKafkaProducer, ...], fakes))


def offsets(records: list[Record]) -> list[int]:
    return [r.offset for r in records]


def test_everything_that_arrived_during_a_transaction_is_taken_by_the_next_in_order() -> None:
    queue = lane()
    queue.add([record(0)])
    first = queue.take(500)
    for batch in ([record(1), record(2)], [record(3)], [record(4), record(5)]):
        queue.add(batch)  # fetched while the first transaction commits
    assert offsets(first) == [0]
    assert offsets(queue.take(500)) == [1, 2, 3, 4, 5]
    assert not queue.arrived.is_set()


def test_a_transaction_takes_at_most_a_batch_and_leaves_the_rest_waiting() -> None:
    queue = lane()
    queue.add([record(n) for n in range(7)])
    assert offsets(queue.take(3)) == [0, 1, 2]
    assert queue.arrived.is_set() and len(queue) == 4


def test_requests_whose_transaction_did_not_commit_are_decided_first_again() -> None:
    queue = lane()
    queue.add([record(0), record(1)])
    failed = queue.take(500)
    queue.add([record(2)])
    queue.put_back(failed)
    assert offsets(queue.take(500)) == [0, 1, 2]


def test_a_request_fetched_twice_is_queued_once() -> None:
    queue = lane()
    queue.add([record(0), record(1)])
    queue.take(500)
    queue.add([record(1), record(2)])  # a fetch that overlaps the one before
    assert offsets(queue.take(500)) == [2]


def test_the_producers_take_turns_transaction_by_transaction() -> None:
    queue = lane()
    first, second = queue.producers
    assert [queue.producer() for _ in range(4)] == [first, second, first, second]


def test_requests_handed_over_in_process_queue_behind_fetched_ones() -> None:
    queue = lane()
    queue.add([record(0)])
    queue.offer(direct("a"))
    queue.add([record(1)])
    taken = queue.take(500)
    assert [i.offset if isinstance(i, ConsumerRecord) else i.request.request_id for i in taken] == [
        0,
        "a",
        1,
    ]


def test_a_lane_left_gives_back_its_own_requests_and_the_first_undecided_offset() -> None:
    queue = lane()
    queue.add([record(4), record(5)])
    queue.offer(direct("a"))
    failed = queue.take(2)
    queue.put_back(failed)
    directs, first = queue.drop()
    assert [d.request.request_id for d in directs] == ["a"]
    assert first == 4
    assert len(queue) == 0 and not queue.arrived.is_set()
    assert lane().drop() == ([], None)
