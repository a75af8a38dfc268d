"""The streamer's priority slots: band order, FIFO within a band, bounded slots, aging."""

from __future__ import annotations

import pytest

from services.streamer.scheduler import Scheduler

URGENT, HIGH, NORMAL, LOW = 0, 1, 2, 3


def drain(s: Scheduler[str], now: float = 0.0) -> list[str]:
    out = []
    while (w := s.take(now)) is not None:
        out.append(w.item)
        s.release()
    return out


def test_urgent_job_is_taken_before_an_older_normal_backlog() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=0)
    for i in range(3):
        s.offer(f"n{i}", NORMAL, 0.0)
    s.offer("u", URGENT, 1.0)
    s.offer("h", HIGH, 2.0)
    assert drain(s, 3.0) == ["u", "h", "n0", "n1", "n2"]


def test_jobs_of_one_band_start_in_arrival_order() -> None:
    s: Scheduler[str] = Scheduler(4, aging_s=0)
    for i in range(5):
        s.offer(f"l{i}", LOW, float(i))
    assert drain(s, 10.0) == [f"l{i}" for i in range(5)]


def test_no_job_is_taken_while_every_slot_is_busy() -> None:
    s: Scheduler[str] = Scheduler(2, aging_s=0)
    for i in range(3):
        s.offer(f"n{i}", NORMAL, 0.0)
    assert s.take(0.0) is not None
    assert s.take(0.0) is not None
    assert s.free_slots == 0
    assert s.take(0.0) is None
    s.release()
    taken = s.take(0.0)
    assert taken is not None and taken.item == "n2"


def test_a_low_job_waiting_past_the_aging_bound_overtakes_fresh_higher_ones() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=10)
    s.offer("old-low", LOW, 0.0)
    s.offer("fresh-normal", NORMAL, 25.0)
    # Waited 25 s = two aging steps: LOW counts as HIGH, ahead of a fresh NORMAL.
    assert drain(s, 25.0) == ["old-low", "fresh-normal"]


def test_an_aged_job_ties_with_a_fresh_one_of_its_new_band_and_yields_to_it() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=10)
    s.offer("old-normal", NORMAL, 0.0)
    s.offer("fresh-high", HIGH, 10.0)
    assert drain(s, 10.0) == ["fresh-high", "old-normal"]


def test_a_low_job_overtakes_a_steady_urgent_backlog_once_aged_past_the_top_band() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=10)
    s.offer("low", LOW, 0.0)
    taken = []
    # A new urgent job arrives every 5 s and the slot frees every 5 s: urgent never drains.
    for step in range(1, 12):
        now = step * 5.0
        s.offer(f"urgent-{step}", URGENT, now)
        job = s.take(now)
        assert job is not None
        taken.append(job.item)
        s.release()
    # Four aging steps (40 s) lift LOW past the top band: it goes at t=40, the 8th take.
    assert taken.index("low") == 7


def test_waiting_counts_per_band_and_in_total() -> None:
    s: Scheduler[str] = Scheduler(1)
    s.offer("a", NORMAL, 0.0)
    s.offer("b", NORMAL, 0.0)
    s.offer("c", URGENT, 0.0)
    assert (s.waiting(NORMAL), s.waiting(URGENT), s.waiting()) == (2, 1, 3)


def test_drop_removes_matching_waiting_jobs_only() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=0)
    for name in ("a1", "b1", "a2"):
        s.offer(name, LOW, 0.0)
    assert s.drop(lambda item: item.startswith("a")) == ["a1", "a2"]
    assert drain(s) == ["b1"]


def test_release_without_take_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Scheduler[str](1).release()


def test_zero_slots_is_rejected() -> None:
    with pytest.raises(ValueError, match="slots"):
        Scheduler[str](0)


def test_peek_names_the_next_job_without_claiming_a_slot() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=0)
    assert s.peek(0.0) is None
    s.offer("n", NORMAL, 0.0)
    s.offer("u", URGENT, 0.0)
    head = s.peek(0.0)
    assert head is not None and head.item == "u"
    assert s.in_use == 0 and s.waiting() == 2
    taken = s.take(0.0)
    assert taken is head


def test_the_least_urgent_band_waiting_is_known() -> None:
    s: Scheduler[str] = Scheduler(1, aging_s=0)
    assert s.lowest_waiting() is None
    s.offer("h", HIGH, 0.0)
    s.offer("n", NORMAL, 0.0)
    assert s.lowest_waiting() == NORMAL
