"""The single writer's decisions over its exact state: in append order, each request sees
the ones before it; a request reaching the owner after its accept_by is never a job."""

from __future__ import annotations

import uuid

from services.gateway.admission_records import AdmissionRequest, Decision, Outcome
from services.gateway.decider import apply_decision, decide, undo
from services.gateway.view import EventsView, idempotent_job_id
from shared.topics import Priority

T0 = 1_800_000_000.0
DIGEST = "ab" * 16


def view(**limits: int) -> EventsView:
    return EventsView(
        submissions_per_minute=limits.get("per_minute", 0),
        max_in_flight=limits.get("in_flight", 0),
        window_s=3600,
        final_retention_s=60,
        max_jobs=1000,
    )


def request(
    user: str = "alice", *, key: str | None = None, digest: str = DIGEST
) -> AdmissionRequest:
    job_id = idempotent_job_id(user, key) if key else str(uuid.uuid4())
    return AdmissionRequest(
        request_id=uuid.uuid4().hex,
        reply_to="gateway-0",
        user_id=user,
        job_id=job_id,
        keyed=key is not None,
        digest=digest,
        job_type="analysis",
        priority=Priority.NORMAL,
        submitted_at=T0,
        accept_by=T0 + 5,
        accepted={},
        run={},
        trace_id="0" * 32,
    )


def test_requests_decided_in_order_accept_exactly_the_in_flight_limit() -> None:
    state = view(in_flight=3)
    outcomes = [decide(state, request(), now=T0, appended_at=T0).outcome for _ in range(10)]
    assert outcomes == [Outcome.ACCEPTED] * 3 + [Outcome.RATE_LIMITED] * 7
    assert state.in_flight("alice") == 3
    assert decide(state, request("bob"), now=T0, appended_at=T0).outcome is Outcome.ACCEPTED


def test_a_repeated_key_replays_the_first_job_and_another_body_is_refused() -> None:
    state = view()
    first = decide(state, request(key="k"), now=T0, appended_at=T0)
    again = decide(state, request(key="k"), now=T0 + 1, appended_at=T0 + 1)
    other = decide(state, request(key="k", digest="cd" * 16), now=T0 + 1, appended_at=T0 + 1)
    assert (first.outcome, again.outcome, other.outcome) == (
        Outcome.ACCEPTED,
        Outcome.REPLAYED,
        Outcome.KEY_REUSED,
    )
    assert again.job_id == first.job_id and again.submitted_at == first.submitted_at


def test_a_request_past_its_accept_by_by_either_clock_is_refused_and_counts_nothing() -> None:
    state = view(in_flight=1)
    late_append = decide(state, request(), now=T0, appended_at=T0 + 6)
    late_decision = decide(state, request(), now=T0 + 6, appended_at=T0)
    assert late_append.outcome is late_decision.outcome is Outcome.EXPIRED
    assert state.in_flight("alice") == 0 and state.jobs == 0


def test_a_new_owner_rebuilt_from_the_log_decides_a_repeated_key_the_same_way() -> None:
    old_owner, new_owner = view(in_flight=2), view(in_flight=2)
    log: list[Decision] = [
        decide(old_owner, r, now=T0, appended_at=T0)
        for r in (request(key="a"), request(), request())
    ]
    for decision in log:  # the decisions log replayed on assignment
        apply_decision(new_owner, decision)
    assert new_owner.in_flight("alice") == 2
    replay = decide(new_owner, request(key="a"), now=T0 + 1, appended_at=T0 + 1)
    assert (replay.outcome, replay.job_id) == (Outcome.REPLAYED, log[0].job_id)
    limited = decide(new_owner, request(), now=T0 + 1, appended_at=T0 + 1)
    assert limited.outcome is Outcome.RATE_LIMITED


def test_an_aborted_transaction_takes_its_acceptances_back() -> None:
    state = view(in_flight=1)
    decision = decide(state, request(key="k"), now=T0, appended_at=T0)
    undo(state, decision)
    assert state.in_flight("alice") == 0 and state.job(decision.job_id) is None
    assert decide(state, request(key="k"), now=T0, appended_at=T0).outcome is Outcome.ACCEPTED


def test_requests_and_decisions_survive_their_records() -> None:
    req = request(key="k")
    assert AdmissionRequest.from_bytes(req.to_bytes()) == req
    decision = decide(view(), req, now=T0, appended_at=T0)
    assert Decision.from_bytes(decision.to_bytes()) == decision
