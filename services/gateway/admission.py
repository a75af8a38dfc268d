"""Admission of a valid submission, the requesting side: the job's records are built here and
sent, with the user, the Idempotency-Key and the body's fingerprint, to the one gateway that
decides for the user (admission_owner.py); its decision is the answer. No HTTP here: an
`Admitted` job or a `Rejection` comes out.

The request carries `accept_by`, half the publish timeout after submission: the owner refuses
a request it reaches later, or whose transaction is still open then, and the requester waits
the whole timeout before its 503. A commit may still take longer than the other half: an
acceptance that reaches the requester after its 503 has its job cancelled (`late`, through
`Repairs`), so a 503 never becomes a job that runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.gateway.admission_link import AdmissionLink
from services.gateway.admission_records import AdmissionRequest, Decision, Outcome
from services.gateway.idempotency import Remembered
from services.gateway.metrics import GatewayMetrics
from services.gateway.publisher import PUBLISH_ERRORS
from services.gateway.rejection import Rejection, retry_later
from services.gateway.repair import Repairs
from services.gateway.view import JobEntry, idempotent_job_id, job_fingerprint
from shared.api import JobSubmission
from shared.auth import Principal
from shared.contracts import CHAT_OPTION_FIELDS, ModelConfig, utcnow
from shared.contracts.chat import last_user_text
from shared.lifecycle import JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    job_id: str
    entry: JobEntry | Remembered
    replayed: bool


@dataclass(frozen=True, slots=True)
class Asked:
    """A submission's request as its job records hold it, dumped once for records and digest.

    Schema 1 consumers require `prompt` and refuse unknown `config` keys: a messages job's
    `prompt` is its last user text, and the fields newer than schema 1 go in `options`.
    """

    prompt: str
    config: dict[str, Any]
    options: dict[str, Any] | None
    messages: list[dict[str, Any]] | None
    retry_of: str | None = None

    @classmethod
    def of(cls, sub: JobSubmission, retry_of: str | None = None) -> Asked:
        values = sub.config.model_dump()
        config = {name: values[name] for name in ModelConfig.model_fields}
        options = {name: values[name] for name in CHAT_OPTION_FIELDS}
        messages = None if sub.messages is None else [m.model_dump() for m in sub.messages]
        return cls(
            sub.prompt if sub.prompt is not None else last_user_text(sub.messages or []),
            config,
            options if any(v is not None for v in options.values()) else None,
            messages,
            retry_of,
        )

    def digest(self, sub: JobSubmission) -> bytes:
        return job_fingerprint(
            self.prompt,
            self.messages,
            sub.job_type,
            sub.priority.value,
            self.config,
            self.options,
            sub.metadata,
            self.retry_of,
        )


def build_records(
    submission: JobSubmission,
    *,
    user_id: str,
    job_id: str,
    trace_id: str,
    submitted_at: datetime,
    accept_by: datetime | None = None,
    asked: Asked | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lifecycle fact (`JobAccepted`) and the command (`RunJob`) of one accepted job, with
    one trace id, as the documents their models would write (`asked`: the submission's
    request, dumped already).

    Built as plain dicts from a validated submission: on the submit path neither is
    validated or constructed as a model again, and each is encoded once, by orjson.
    `accept_by` is when the gateway gives up on the command: appended later, it is not run.
    """
    asked = asked or Asked.of(submission)
    spec: dict[str, Any] = {
        "user_id": user_id,
        "prompt": asked.prompt,
        "job_type": submission.job_type,
        "priority": submission.priority,
        "config": asked.config,
        "metadata": submission.metadata,
        "messages": asked.messages,
        "options": asked.options,
        "submitted_at": submitted_at,
        "on_interrupt": submission.on_interrupt,
        "retry_of": asked.retry_of,
        "webhook_url": submission.webhook_url,
    }
    accepted = _envelope("job.accepted", job_id, submitted_at, trace_id, spec)
    run = _envelope(
        "job.run",
        job_id,
        submitted_at,
        trace_id,
        {**spec, "attempt": 1, "not_before": None, "accept_by": accept_by, "resume": None},
    )
    return accepted, run


def _envelope(
    record_type: str, job_id: str, at: datetime, trace_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The fields of `shared.contracts.Envelope`, in its order."""
    return {
        "type": record_type,
        "schema_version": 1,
        "event_id": uuid.uuid4(),
        "job_id": job_id,
        "occurred_at": at,
        "trace_id": trace_id,
        "data": data,
    }


class Admission:
    def __init__(
        self,
        link: AdmissionLink,
        metrics: GatewayMetrics,
        repairs: Repairs,
        *,
        instance: str,
        timeout_s: float,
        reply_partition: int = -1,
    ) -> None:
        self.link = link
        self.metrics = metrics
        self.repairs = repairs
        self.instance = instance
        self.reply_partition = reply_partition
        self.timeout_s = timeout_s

    async def submit(
        self,
        who: Principal,
        sub: JobSubmission,
        key: str | None,
        trace_id: str,
        *,
        retry_of: str | None = None,
    ) -> Admitted | Rejection:
        """Admit `sub` for `who`; `key` is a valid Idempotency-Key or None; `retry_of`: the
        job `sub` runs again (its records say so)."""
        if self.repairs.full:
            # A 503 now could not be voided if its acceptance came late: refuse it first.
            self.metrics.background_full.inc()
            return retry_later(
                "kafka-unavailable", "Job queue unavailable", "the job was not queued; try again", 1
            )
        asked = Asked.of(sub, retry_of)
        digest = asked.digest(sub)
        job_id = str(uuid.uuid4()) if key is None else idempotent_job_id(who.user_id, key)
        submitted_at = utcnow()
        accept_by = submitted_at + timedelta(seconds=self.timeout_s / 2)
        accepted, run = build_records(
            sub,
            user_id=who.user_id,
            job_id=job_id,
            trace_id=trace_id,
            submitted_at=submitted_at,
            accept_by=accept_by,
            asked=asked,
        )
        request = AdmissionRequest(
            request_id=uuid.uuid4().hex,
            reply_to=self.instance,
            user_id=who.user_id,
            job_id=job_id,
            keyed=key is not None,
            digest=digest.hex(),
            job_type=sub.job_type,
            priority=sub.priority,
            submitted_at=submitted_at.timestamp(),
            accept_by=accept_by.timestamp(),
            accepted=accepted,
            run=run,
            trace_id=trace_id,
            reply_partition=self.reply_partition,
        )
        started = time.perf_counter()
        try:
            decision = await self.link.ask(request, self.timeout_s)
        except PUBLISH_ERRORS as exc:
            log.warning(
                "admission request of job %s not sent: %s: %s",
                job_id,
                type(exc).__name__,
                exc,
                extra={"job_id": job_id, "trace_id": trace_id},
            )
            decision = None
        if decision is None or decision.outcome is Outcome.EXPIRED:
            self.metrics.publish_failures.inc()
            # A request sent may still be decided until its accept_by, which refuses it after.
            wait_s = (accept_by - utcnow()).total_seconds()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            return retry_later(
                "kafka-unavailable", "Job queue unavailable", "the job was not queued; try again", 1
            )
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        return self._answer(decision, sub, trace_id)

    def late(self, request: AdmissionRequest, decision: Decision) -> None:
        """An acceptance of a request answered 503 already: cancel its job."""
        self.metrics.admission_late_voids.inc()
        log.warning(
            "job %s accepted after its 503: cancelling it",
            decision.job_id,
            extra={"job_id": decision.job_id, "trace_id": request.trace_id},
        )
        self.repairs.void(decision.job_id, request.trace_id, request.user_id)

    def _answer(
        self, decision: Decision, sub: JobSubmission, trace_id: str
    ) -> Admitted | Rejection:
        job_id = decision.job_id
        match decision.outcome:
            case Outcome.ACCEPTED | Outcome.REPLAYED:
                entry = Remembered(
                    digest=0,
                    status=JobStatus(decision.status),
                    job_type=decision.job_type,
                    priority=decision.priority,
                    submitted_at=datetime.fromtimestamp(decision.submitted_at, UTC),
                )
                if decision.outcome is Outcome.REPLAYED:
                    self.metrics.replayed.inc()
                    return Admitted(job_id, entry, replayed=True)
                self.metrics.submitted.labels(sub.job_type, sub.priority.value).inc()
                log.info(
                    "job queued (%s, %s)",
                    sub.job_type,
                    sub.priority.value,
                    extra={"job_id": job_id, "trace_id": trace_id},
                )
                return Admitted(job_id, entry, replayed=False)
            case Outcome.KEY_REUSED:
                self.metrics.rejected.labels("idempotency-key-reused").inc()
                return Rejection(
                    409,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for a different body",
                    extra={"job_id": job_id},
                )
            case Outcome.KEYS_FULL:
                # Remembering no more keys must not mean forgetting old ones: refuse new ones.
                self.metrics.rejected.labels("idempotency-memory-full").inc()
                return retry_later(
                    "idempotency-memory-full",
                    "Idempotency-Keys unavailable",
                    "the gateway holds as many Idempotency-Keys as it may; submit without one"
                    " or try again later",
                    decision.retry_after_s,
                )
            case _:
                limit = decision.limit
                self.metrics.rate_limited.labels(limit).inc()
                self.metrics.rejected.labels("rate-limited").inc()
                return Rejection(
                    429,
                    f"rate-limit-{limit}",
                    "Too many requests",
                    f"at most {decision.allowed} {limit.replace('-', ' ')} per user",
                    headers={"Retry-After": str(decision.retry_after_s)},
                    extra={"limit": limit, "allowed": decision.allowed},
                )
