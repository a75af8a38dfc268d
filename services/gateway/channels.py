"""The gateway's Kafka channels: it submits and cancels jobs, keeps a view of the events, and
decides admissions with the other gateways (admission_owner.py, admission_link.py)."""

from __future__ import annotations

from services.gateway.admission_records import (
    AdmissionRequest,
    Decision,
    admission_group,
    admissions_topic,
    decisions_topic,
    replies_topic,
    transactional_id_prefix,
)
from shared.channels import (
    CONTROL,
    EVENTS,
    JOBS,
    REVOCATIONS_FOLLOWER,
    WEBHOOK_DEFAULTS,
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
    "Admission decisions, written in the owner's transaction with the job's records, on the"
    " partition of their requests; a new owner of a partition rebuilds from them.",
    key="user_id",
)
REPLIES = Channel(
    "admission-replies",
    replies_topic,
    (Decision,),
    "A copy of each decision for a request from another gateway, in the same transaction, on"
    " the requester's partition (from its instance id; reply_to header names it).",
    key="user_id",
)

# The events view reads every partition from a lookback window: each instance sees every job.
EVENTS_VIEW = Consumer("events-view", (EVENTS,))
# All gateways in one group on the requests: each partition, so each user, has one owner.
ADMISSION_OWNER = Consumer("admission", (ADMISSIONS,), group_of=admission_group)
# No group: a new owner reads its partitions' decisions back when it takes them.
DECISIONS_READER = Consumer("decisions", (DECISIONS,))
# No group: a requester follows its own partition of the replies.
REPLIES_READER = Consumer("replies", (REPLIES,))

# No group: every instance reads every user's default webhook URL.
WEBHOOK_DEFAULTS_READER = Consumer("webhook-defaults", (WEBHOOK_DEFAULTS,))

GATEWAY = ServiceChannels(
    "gateway",
    publishes=(*JOBS, CONTROL, EVENTS, ADMISSIONS, DECISIONS, REPLIES, WEBHOOK_DEFAULTS),
    consumers=(
        EVENTS_VIEW,
        REVOCATIONS_FOLLOWER,
        WEBHOOK_DEFAULTS_READER,
        ADMISSION_OWNER,
        DECISIONS_READER,
        REPLIES_READER,
    ),
    transactional_ids=transactional_id_prefix,
)
