"""Records on `streamjobs.webhooks` and `streamjobs.webhooks.retry`: a job's final event to
POST to the job's webhook, and the tries that follow a failed one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.envelope import Envelope


class WebhookDeliveryData(BaseModel):
    model_config = ConfigDict(frozen=True)

    webhook_id: str = Field(
        description="msg_<job_id>_<final status>: the same on every try of this delivery"
    )
    user_id: str = Field(description="the job's owner, whose secret signs the delivery")
    url: str
    event_type: str = Field(description="the final event's type: job.completed, job.failed…")
    payload: str = Field(description="the body POSTed: the final event record's JSON as stored")
    attempt: int = Field(default=1, ge=1, description="the try this record asks for")
    first_attempt_at: datetime | None = Field(
        default=None, description="when the first try was made; tries end 24 h after it"
    )
    not_before: datetime | None = Field(
        default=None, description="retry topic: do not try before this time"
    )


class WebhookDelivery(Envelope):
    """Command: POST this job's final event to its webhook (signed, Standard Webhooks)."""

    type: Literal["webhook.deliver"] = "webhook.deliver"
    data: WebhookDeliveryData
