"""What travels between a gateway that is asked to admit a job and the gateway that owns the
user's admission partition: the request (with the job's records built) and the decision.

Both are small JSON records keyed by user id. The request is appended to
`{prefix}.admissions` (broker append time); the decision to the same partition number of
`{prefix}.admission-decisions`, inside the owner's transaction, where the requester reads
it and a later owner of the partition rebuilds the user's recent state from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum

from shared.topics import Priority

HEADER_REPLY_TO = "reply_to"


def admissions_topic(prefix: str) -> str:
    return f"{prefix}.admissions"


def decisions_topic(prefix: str) -> str:
    return f"{prefix}.admission-decisions"


def admission_group(prefix: str) -> str:
    """One consumer group of every gateway on the admission topic: one owner per partition."""
    return f"{prefix}-gateway-admission"


def transactional_id_prefix(prefix: str) -> str:
    """What every admission transactional id starts with (one ACL grants them all)."""
    return f"{prefix}-admission-"


def transactional_id(prefix: str, partition: int) -> str:
    """One per admission partition: a new owner's producer fences the previous owner's."""
    return f"{transactional_id_prefix(prefix)}{partition}"


def _to_json(record: AdmissionRequest | Decision) -> bytes:
    # Every field is a str, number, bool or str enum: a shallow dict, not `asdict`'s deep
    # copy, which cost more than the encoding on the submit path.
    names = _FIELDS[type(record)]
    return json.dumps({n: getattr(record, n) for n in names}, separators=(",", ":")).encode()


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # the key names a job accepted before, with the same body
    KEY_REUSED = "key-reused"  # the key names a job accepted before, with another body
    RATE_LIMITED = "rate-limited"
    KEYS_FULL = "keys-full"  # no room to remember one more Idempotency-Key
    EXPIRED = "expired"  # reached the owner after its accept_by: the requester gave up


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    request_id: str
    reply_to: str  # the requesting instance's id
    user_id: str
    job_id: str
    keyed: bool
    digest: str  # hex of the body's fingerprint
    job_type: str
    priority: Priority
    submitted_at: float  # epoch seconds, the records' occurred_at
    accept_by: float  # epoch seconds; decided later, the request is refused
    accepted: str  # the job.accepted record, JSON
    run: str  # the job.run record, JSON
    trace_id: str

    def to_bytes(self) -> bytes:
        return _to_json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AdmissionRequest:
        """Raises ValueError, KeyError or TypeError for a record that is not a request."""
        data = json.loads(raw)
        data["priority"] = Priority(data["priority"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    user_id: str
    job_id: str
    outcome: Outcome
    # The job the answer names: accepted now, or accepted before (a replay).
    job_type: str = ""
    priority: Priority = Priority.NORMAL
    submitted_at: float = 0.0
    status: str = "queued"
    digest: str = ""  # accepted only: what a later owner needs to tell bodies apart
    limit: str = ""  # rate-limited only
    allowed: int = 0
    retry_after_s: int = 0

    def to_bytes(self) -> bytes:
        return _to_json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Decision:
        """Raises ValueError, KeyError or TypeError for a record that is not a decision."""
        data = json.loads(raw)
        data["outcome"] = Outcome(data["outcome"])
        data["priority"] = Priority(data["priority"])
        return cls(**data)


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (AdmissionRequest, Decision)
}
