"""The streamer's Kafka channels: it runs jobs from the job topics and streams their output."""

from __future__ import annotations

from shared.channels import (
    CHUNKS,
    CONTROL,
    DLQ,
    EVENTS,
    INSTANCES,
    JOBS,
    RETRY,
    Consumer,
    ServiceChannels,
)
from shared.topics import GROUP_STREAMER

# The default consumer groups (settings may name others); the retry intake's name extends the
# job intake's, so one prefixed ACL grants both.
JOB_GROUP = GROUP_STREAMER
RETRY_GROUP = f"{GROUP_STREAMER}-retry"

JOB_INTAKE = Consumer("jobs", JOBS, group=JOB_GROUP)
RETRY_INTAKE = Consumer("retry", (RETRY,), group=RETRY_GROUP)
# No group: each instance must see every cancel, whichever instance runs the job.
CONTROL_READER = Consumer("control", (CONTROL,))

STREAMER = ServiceChannels(
    "streamer",
    publishes=(CHUNKS, RETRY, EVENTS, DLQ, INSTANCES),
    consumers=(JOB_INTAKE, RETRY_INTAKE, CONTROL_READER),
)
