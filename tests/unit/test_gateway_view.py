"""The gateway's events view: limits, ownership, idempotency and bounds, without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

from services.gateway.limits import Limit
from services.gateway.view import (
    EventsView,
    fingerprint,
    idempotent_job_id,
    is_keyed,
)
from shared.lifecycle import JobStatus
from shared.topics import Priority

T0 = 1_800_000_000.0
DIGEST = b"d" * 16


def make(**overrides: object) -> EventsView:
    values: dict[str, object] = {
        "submissions_per_minute": 3,
        "max_in_flight": 2,
        "window_s": 3600.0,
        "final_retention_s": 60.0,
        "max_jobs": 100,
        "in_flight_retry_after_s": 5,
    }
    values.update(overrides)
    return EventsView(**values)  # type: ignore[arg-type]


def accept(view: EventsView, job_id: str, owner: str = "alice", at: float = T0) -> bool:
    return view.accepted(
        job_id,
        owner=owner,
        job_type="analysis",
        priority=Priority.NORMAL,
        submitted_at=datetime.fromtimestamp(at, UTC),
        digest=DIGEST,
        at=at,
    )


def test_jobs_in_flight_limit_counts_until_a_final_event() -> None:
    view = make(submissions_per_minute=0)
    accept(view, "j1")
    assert view.check("alice", T0) is None
    accept(view, "j2")
    limited = view.check("alice", T0)
    assert limited is not None and limited.limit is Limit.JOBS_IN_FLIGHT
    assert limited.retry_after_s == 5
    view.status_event("j1", "job.started", T0 + 1)
    assert view.check("alice", T0 + 1) is not None  # running is still in flight
    view.status_event("j1", "job.completed", T0 + 2)
    assert view.check("alice", T0 + 2) is None
    assert view.in_flight("alice") == 1
    assert view.check("bob", T0) is None  # per user


def test_submissions_per_minute_limit_slides_and_says_when_to_retry() -> None:
    view = make(max_in_flight=0)
    for n, at in enumerate((T0, T0 + 10, T0 + 20)):
        accept(view, f"j{n}", at=at)
        view.status_event(f"j{n}", "job.completed", at)
    limited = view.check("alice", T0 + 30)
    assert limited is not None and limited.limit is Limit.SUBMISSIONS_PER_MINUTE
    assert limited.retry_after_s == 30  # the first leaves the window at T0 + 60
    assert view.check("alice", T0 + 60) is None


def test_limits_of_zero_are_off() -> None:
    view = make(submissions_per_minute=0, max_in_flight=0)
    for n in range(50):
        accept(view, f"j{n}")
    assert view.check("alice", T0) is None


def test_replayed_events_change_nothing() -> None:
    view = make(submissions_per_minute=0, max_in_flight=0)
    assert accept(view, "j1") is True
    assert accept(view, "j1") is False
    view.status_event("j1", "job.cancelled", T0)
    view.status_event("j1", "job.cancelled", T0)
    view.status_event("j1", "job.started", T0)  # late, after a final state
    assert view.in_flight("alice") == 0
    entry = view.job("j1")
    assert entry is not None and entry.status is JobStatus.CANCELLED


def test_events_of_unknown_jobs_are_ignored() -> None:
    view = make()
    view.status_event("older-than-the-view", "job.completed", T0)
    assert view.jobs == 0 and view.users == 0


def test_final_jobs_leave_after_their_retention_and_keys_only_after_the_window() -> None:
    view = make(max_in_flight=0, submissions_per_minute=0)
    keyed = idempotent_job_id("alice", "k1")
    accept(view, "00000000-0000-4000-8000-000000000001")
    accept(view, keyed)
    for job_id in ("00000000-0000-4000-8000-000000000001", keyed):
        view.status_event(job_id, "job.completed", T0)
    view.expire(T0 + 61)
    assert view.job("00000000-0000-4000-8000-000000000001") is None
    assert view.job(keyed) is None
    remembered = view.remembered(keyed)
    assert remembered is not None and remembered.status is JobStatus.COMPLETED
    view.expire(T0 + 3599)
    assert view.remembered(keyed) is not None
    view.expire(T0 + 3600 + 3600 / 24)
    assert view.remembered(keyed) is None
    assert view.users == 0


def test_jobs_in_flight_expire_after_the_window_and_release_the_count() -> None:
    view = make()
    accept(view, "j1")
    view.expire(T0 + 3600)
    assert view.job("j1") is None
    assert view.in_flight("alice") == 0
    assert view.users == 0


def test_the_view_holds_at_most_max_jobs_forgetting_the_oldest() -> None:
    view = make(max_jobs=3, max_in_flight=0, submissions_per_minute=0)
    for n in range(5):
        accept(view, f"j{n}", owner=f"u{n % 2}", at=T0 + n)
    assert view.jobs == 3
    assert view.job("j0") is None and view.job("j1") is None
    assert view.job("j4") is not None
    assert view.in_flight("u0") + view.in_flight("u1") == 3


def test_withdrawn_acceptance_frees_the_slot_and_the_minute() -> None:
    view = make(submissions_per_minute=1, max_in_flight=1)
    accept(view, "j1")
    assert view.check("alice", T0) is not None
    view.withdraw("j1", T0)
    assert view.job("j1") is None
    assert view.check("alice", T0) is None


def test_idempotent_job_ids_are_per_user_and_key_and_recognisable() -> None:
    a = idempotent_job_id("alice", "order-1")
    assert a == idempotent_job_id("alice", "order-1")
    assert a != idempotent_job_id("bob", "order-1")
    assert a != idempotent_job_id("alice", "order-2")
    assert is_keyed(a)
    assert not is_keyed("4c3f1e8e-1b9e-4d53-9b59-1c8d6f4b8a10")
    assert not is_keyed("not-a-uuid")


def test_fingerprint_tells_bodies_apart_but_not_key_order() -> None:
    config = {"model": "m", "max_tokens": 5}
    base = fingerprint("p", "analysis", "normal", config, {"a": 1, "b": 2})
    assert base == fingerprint(
        "p", "analysis", "normal", dict(reversed(config.items())), {"b": 2, "a": 1}
    )
    assert base != fingerprint("p2", "analysis", "normal", config, {"a": 1, "b": 2})
    assert base != fingerprint("p", "analysis", "high", config, {"a": 1, "b": 2})
    assert base != fingerprint("p", "analysis", "normal", config, {})


def test_the_first_acceptance_fixes_the_owner_whatever_arrives_later() -> None:
    view = make(max_in_flight=0, submissions_per_minute=0, max_jobs=1)
    keyed = idempotent_job_id("alice", "k1")
    for job_id in ("00000000-0000-4000-8000-000000000001", keyed):
        assert accept(view, job_id, owner="alice") is True
        assert accept(view, job_id, owner="mallory", at=T0 + 1) is False
        entry = view.job(job_id)
        assert entry is not None and entry.owner == "alice"
    assert view.in_flight("mallory") == 0
    # The keyed job's entry leaves the view; a later fact still does not bring it back.
    accept(view, "00000000-0000-4000-8000-000000000002", owner="bob")
    assert view.job(keyed) is None
    assert accept(view, keyed, owner="mallory", at=T0 + 2) is False
    assert view.job(keyed) is None and view.in_flight("mallory") == 0
