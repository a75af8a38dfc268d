"""Cancelling a job: the per-user limit, who may cancel it (the events view, else the read
side), and the command on the control topic. No HTTP here: an answer or a `Rejection`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from urllib.parse import quote

from services.gateway.limits import PerMinute
from services.gateway.metrics import GatewayMetrics
from services.gateway.proxy import ResultsClient, Unreachable
from services.gateway.publisher import PUBLISH_ERRORS, Publisher
from services.gateway.rejection import RESULTS_UNAVAILABLE, Rejection, retry_later
from services.gateway.view import EventsView
from shared.api import API_PREFIX, CancelAccepted
from shared.auth import Principal
from shared.contracts import CancelJob, CancelJobData, new_trace_id
from shared.lifecycle import JobStatus
from shared.topics import control_topic


class Cancels:
    def __init__(
        self,
        view: EventsView,
        metrics: GatewayMetrics,
        publisher: Publisher,
        results: ResultsClient,
        *,
        prefix: str,
        per_minute: int,
    ) -> None:
        self.view = view
        self.metrics = metrics
        self.publisher = publisher
        self.results = results
        self.prefix = prefix
        self.limit = PerMinute(per_minute)

    async def cancel(
        self, who: Principal, job_id: str, trace_id: str | None, headers: Mapping[str, str]
    ) -> CancelAccepted | Rejection:
        """`headers` carry the caller's token to the read side, which checks it itself."""
        wait = self.limit.take(who.user_id, time.monotonic())
        if wait is not None:
            self.metrics.rate_limited.labels("cancels-per-minute").inc()
            return Rejection(
                429,
                "rate-limit-cancels-per-minute",
                "Too many requests",
                f"at most {self.limit.allowed} cancels per minute per user",
                headers={"Retry-After": str(wait)},
                extra={"limit": "cancels-per-minute", "allowed": self.limit.allowed},
            )
        status = await self._status_for(who, job_id, headers)
        if isinstance(status, Rejection):
            return status
        if status in (JobStatus.COMPLETED, JobStatus.FAILED):
            return Rejection(
                409,
                "job-finished",
                "Job already finished",
                f"job {job_id} is {status.value}; it cannot be cancelled",
                extra={"status_of_job": status.value},
            )
        answer = CancelAccepted(job_id=job_id, status=status)
        if status is JobStatus.CANCELLED:
            return answer  # nothing left to stop: the same answer, no command
        command = CancelJob(
            job_id=job_id,
            trace_id=trace_id or new_trace_id(),
            data=CancelJobData(user_id=who.user_id, admin=who.is_admin),
        )
        try:
            await self.publisher.once(control_topic(self.prefix), command)
        except PUBLISH_ERRORS:
            self.metrics.publish_failures.inc()
            return retry_later(
                "kafka-unavailable",
                "Control topic unavailable",
                "the cancel was not sent; try again",
                1,
            )
        self.metrics.cancels.inc()
        return answer

    async def _status_for(
        self, who: Principal, job_id: str, headers: Mapping[str, str]
    ) -> JobStatus | Rejection:
        """The job's status if `who` may act on it; 404 otherwise (never says whose it is)."""
        not_found = Rejection(404, "job-not-found", "Job not found", f"no job {job_id}")
        entry = self.view.job(job_id)
        if entry is not None:
            return entry.status if who.may_see(entry.owner) else not_found
        # Older than the view: the read side knows, and checks the token itself.
        try:
            answer = await self.results.forward(
                "GET", f"{API_PREFIX}/jobs/{quote(job_id, safe='')}", headers
            )
        except Unreachable:
            self.metrics.forward_failures.inc()
            return RESULTS_UNAVAILABLE
        if answer.status in (403, 404):
            return not_found
        if answer.status != 200:
            return RESULTS_UNAVAILABLE
        try:
            body = json.loads(answer.body)
            owner, status = body["user_id"], JobStatus(body["status"])
        except (ValueError, KeyError, TypeError):
            return RESULTS_UNAVAILABLE
        return status if who.may_see(owner) else not_found
