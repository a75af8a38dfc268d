"""Retrying a job: a failed or cancelled job runs again as a new job, with the inputs it was
accepted with, through the same admission as a submission (limits, Idempotency-Key).

The inputs come from the read side, which stores every accepted spec: a retry does not
depend on this instance's view having seen the job. No HTTP here: a `Retry` to admit or a
`Rejection` comes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import ValidationError

from services.gateway.metrics import GatewayMetrics
from services.gateway.proxy import ResultsClient, Unreachable
from services.gateway.rejection import RESULTS_UNAVAILABLE, Rejection
from services.gateway.submit import parse_submission
from shared.api import API_PREFIX, JobInputs, JobSubmission
from shared.auth import SCOPE_READ, Principal
from shared.contracts import JobSpec
from shared.jobtypes import JobTypes
from shared.lifecycle import JobStatus

RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
# The spec's fields a submission does not name as they are: who and when are the new job's,
# the options travel in `config`, and `retry_of` is set for the new job, not copied.
_REBUILT = frozenset({"user_id", "submitted_at", "prompt", "messages", "config", "options"})
_NOT_COPIED = frozenset({"retry_of"})


def resubmission(spec: JobSpec) -> dict[str, Any]:
    """The submission body that asks again what `spec` asked: every field of the spec a
    submission has, the options back in `config`, a messages job without its prompt."""
    body: dict[str, Any] = {
        name: value
        for name, value in spec.model_dump(mode="json").items()
        if name in JobSubmission.model_fields
        and name not in _REBUILT | _NOT_COPIED
        and value is not None
    }
    if spec.messages is None:
        body["prompt"] = spec.prompt
    else:
        body["messages"] = [m.model_dump(mode="json") for m in spec.messages]
    config = spec.config.model_dump(mode="json")
    if spec.options is not None:
        config.update(spec.options.model_dump(mode="json", exclude_none=True))
    body["config"] = config
    return body


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry to admit: the original job, its owner (whose job the retry is) and the body."""

    job_id: str
    owner: Principal
    submission: JobSubmission


def _not_retryable(job_id: str, status: JobStatus) -> Rejection:
    return Rejection(
        409,
        "job-not-retryable",
        "Job cannot be retried",
        f"only failed or cancelled jobs can be retried; job {job_id} is {status.value}",
        extra={"status_of_job": status.value},
    )


def _forgotten(job_id: str) -> Rejection:
    return Rejection(
        409,
        "job-inputs-forgotten",
        "Job cannot be retried",
        f"what job {job_id} asked is no longer stored (retention); submit it again instead",
    )


class Retries:
    def __init__(
        self,
        results: ResultsClient,
        metrics: GatewayMetrics,
        *,
        job_types: JobTypes,
        max_prompt_chars: int,
        max_depth: int,
        max_messages: int,
    ) -> None:
        self.results = results
        self.metrics = metrics
        self.job_types = job_types
        self.max_prompt_chars = max_prompt_chars
        self.max_depth = max_depth
        self.max_messages = max_messages

    async def prepare(
        self, who: Principal, job_id: str, headers: Mapping[str, str]
    ) -> Retry | Rejection:
        """The retry of `job_id` for `who` (its owner or an admin); `headers` carry the
        caller's token to the read side, which checks it and who may see the job."""
        inputs = await self._inputs(job_id, headers)
        if isinstance(inputs, Rejection):
            return inputs
        if not who.may_see(inputs.user_id):
            return Rejection(404, "job-not-found", "Job not found", f"no job {job_id}")
        if inputs.status not in RETRYABLE:
            return _not_retryable(job_id, inputs.status)
        if inputs.spec is None:
            return _forgotten(job_id)
        # Checked again as a submission is: the bounds or job types may have changed since.
        parsed = parse_submission(
            orjson.dumps(resubmission(inputs.spec)),
            max_prompt_chars=self.max_prompt_chars,
            job_types=self.job_types,
            max_depth=self.max_depth,
            max_messages=self.max_messages,
        )
        if isinstance(parsed, Rejection):
            return parsed
        # The retry is the owner's job, as the original was, whoever asked for it.
        owner = who if who.user_id == inputs.user_id else Principal(inputs.user_id, frozenset())
        return Retry(job_id, owner, parsed)

    async def _inputs(self, job_id: str, headers: Mapping[str, str]) -> JobInputs | Rejection:
        try:
            answer = await self.results.forward(
                "GET", f"{API_PREFIX}/jobs/{quote(job_id, safe='')}/inputs", headers
            )
        except Unreachable:
            self.metrics.forward_failures.inc()
            return RESULTS_UNAVAILABLE
        if answer.status == 404:
            return Rejection(404, "job-not-found", "Job not found", f"no job {job_id}")
        if answer.status == 403:  # the read side hides others' jobs as 404: this is the scope
            return Rejection(
                403,
                "forbidden",
                "Forbidden",
                f"a retry reads the job first: the token needs the {SCOPE_READ} scope too",
            )
        if answer.status != 200:
            return RESULTS_UNAVAILABLE
        try:
            return JobInputs.model_validate_json(answer.body)
        except ValidationError:
            return RESULTS_UNAVAILABLE
