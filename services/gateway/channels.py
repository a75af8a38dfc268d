"""The gateway's Kafka channels: it submits and cancels jobs, keeps a view of the events, and
decides admissions with the other gateways (admission_owner.py, admission_link.py)."""

from __future__ import annotations

from services.gateway.admission_records import (
    AdmissionRequest,
    Decision,
    admission_group,
    admissions_topic,
    decisions_topic,
    transactional_id_prefix,
)
from shared.channels import (
    CONTROL,
    EVENTS,
    JOBS,
    REVOCATIONS_FOLLOWER,
    Channel,
    Consumer,
    ServiceChannels,
)

ADMISSIONS = Channel(
    "admissions",
    admissions_topic,
    (AdmissionRequest,),
    "Admission requests, with the job's records built; the owner of the user's partition"
    " decides them in order. Broker append time judges accept_by.",
    key="user_id",
)
DECISIONS = Channel(
    "admission-decisions",
    decisions_topic,
    (Decision,),
    "Admission decisions, written in the owner's transaction with the job's records; the"
    " requester reads its own by the reply_to header, a new owner rebuilds from them.",
    key="user_id",
)

# The events view reads every partition from a lookback window: each instance sees every job.
EVENTS_VIEW = Consumer("events-view", (EVENTS,))
# All gateways in one group on the requests: each partition, so each user, has one owner.
ADMISSION_OWNER = Consumer("admission", (ADMISSIONS,), group_of=admission_group)
# No group: the requester follows every partition for its replies, a new owner its own.
DECISIONS_READER = Consumer("decisions", (DECISIONS,))

GATEWAY = ServiceChannels(
    "gateway",
    publishes=(*JOBS, CONTROL, EVENTS, ADMISSIONS, DECISIONS),
    consumers=(EVENTS_VIEW, REVOCATIONS_FOLLOWER, ADMISSION_OWNER, DECISIONS_READER),
    transactional_ids=transactional_id_prefix,
)
