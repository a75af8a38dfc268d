"""The single writer's decision on one admission request, over its exact per-user state.

Pure logic over the owner's `EventsView`, no I/O: the owner of the user's admission
partition asks, in the order the requests were appended, and writes what comes out.
An acceptance is counted at once, so the next request of the batch sees it; an aborted
transaction takes it back with `undo`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.gateway.admission_records import AdmissionRequest, Decision, Outcome
from services.gateway.idempotency import short_digest
from services.gateway.view import EventsView, JobEntry


def decide(view: EventsView, req: AdmissionRequest, *, now: float, appended_at: float) -> Decision:
    """Decide `req`, appended at `appended_at` (the broker's clock), at `now`."""
    if appended_at > req.accept_by or now > req.accept_by:
        # The requester has answered 503 or is about to: this must not become a job.
        return Decision(req.request_id, req.user_id, req.job_id, Outcome.EXPIRED)
    digest = bytes.fromhex(req.digest)
    if req.keyed:
        known = view.job(req.job_id) or view.remembered(req.job_id)
        if known is not None:
            same = (
                known.fingerprint == digest
                if isinstance(known, JobEntry)
                else known.digest == short_digest(digest)
            )
            if not same:
                return Decision(req.request_id, req.user_id, req.job_id, Outcome.KEY_REUSED)
            return Decision(
                req.request_id,
                req.user_id,
                req.job_id,
                Outcome.REPLAYED,
                job_type=known.job_type,
                priority=known.priority,
                submitted_at=known.submitted_at.timestamp(),
                status=known.status.value,
            )
        if view.keys.full:
            return Decision(
                req.request_id,
                req.user_id,
                req.job_id,
                Outcome.KEYS_FULL,
                retry_after_s=view.keys.retry_after_s(now),
            )
    limited = view.check(req.user_id, now)
    if limited is not None:
        return Decision(
            req.request_id,
            req.user_id,
            req.job_id,
            Outcome.RATE_LIMITED,
            limit=limited.limit.value,
            allowed=limited.allowed,
            retry_after_s=limited.retry_after_s,
        )
    decision = Decision(
        req.request_id,
        req.user_id,
        req.job_id,
        Outcome.ACCEPTED,
        job_type=req.job_type,
        priority=req.priority,
        submitted_at=req.submitted_at,
        digest=req.digest,
    )
    apply_decision(view, decision)
    return decision


def apply_decision(view: EventsView, decision: Decision) -> None:
    """Count an accepted decision in the view (again changes nothing): deciding and rebuild."""
    if decision.outcome is not Outcome.ACCEPTED:
        return
    view.accepted(
        decision.job_id,
        owner=decision.user_id,
        job_type=decision.job_type,
        priority=decision.priority,
        submitted_at=datetime.fromtimestamp(decision.submitted_at, UTC),
        digest=bytes.fromhex(decision.digest),
        at=decision.submitted_at,
    )


def undo(view: EventsView, decision: Decision) -> None:
    """Take back an acceptance whose transaction did not commit."""
    if decision.outcome is Outcome.ACCEPTED:
        view.withdraw(decision.job_id, decision.submitted_at)
