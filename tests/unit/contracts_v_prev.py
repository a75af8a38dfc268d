"""Schema 1 of the job records, as commit 4904f62 declared them: the previous consumer.

`shared/contracts/jobs.py` of that commit, verbatim below the line, plus its `JobAccepted`
(from `shared/contracts/events.py`); kept so a test reads new records as an old consumer does.
"""

# ---- git show 4904f62:shared/contracts/jobs.py (docstring dropped) ----

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.envelope import Envelope
from shared.topics import Priority


class ModelConfig(BaseModel):
    """What the LLM is asked to do; every field the OpenAI chat API shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "gpt-4o-mini"
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None


class JobSpec(BaseModel):
    """A job as the user asked for it."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    prompt: str
    job_type: str
    priority: Priority
    config: ModelConfig
    metadata: dict[str, Any] = Field(default_factory=dict)
    submitted_at: datetime


class RunJobData(JobSpec):
    attempt: int = Field(default=1, ge=1, description="1 for the first run, +1 per retry")
    not_before: datetime | None = Field(
        default=None, description="retry topic only: do not start before this time"
    )
    accept_by: datetime | None = Field(
        default=None,
        description="attempt 1: the gateway gave up on this record at this time; appended"
        " by the broker later than that (LogAppendTime), it is not run",
    )


class RunJob(Envelope):
    """Command on `streamjobs.jobs.{band}` (and `.retry`): stream this job."""

    type: Literal["job.run"] = "job.run"
    data: RunJobData


class CancelJobData(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: str = Field(description="who asked; a streamer obeys only the job's owner or an admin")
    admin: bool = False
    reason: str = "cancelled by user"


class CancelJob(Envelope):
    """Command on `streamjobs.control`: stop this job, queued or running."""

    type: Literal["job.cancel"] = "job.cancel"
    data: CancelJobData


class DeadLetterData(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    error_type: str
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    attempts: int = 0
    original: str = Field(description="the original record value, decoded as UTF-8 (lossy)")


class JobDeadLettered(Envelope):
    """Record on `streamjobs.jobs.dlq`: a job or record that failed for good, and why."""

    type: Literal["job.dead_lettered"] = "job.dead_lettered"
    data: DeadLetterData


# ---- from git show 4904f62:shared/contracts/events.py ----
class JobAcceptedData(JobSpec):
    pass


class JobAccepted(Envelope):
    """The gateway queued the job."""

    type: Literal["job.accepted"] = "job.accepted"
    data: JobAcceptedData
