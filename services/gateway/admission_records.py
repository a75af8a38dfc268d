"""What travels between a gateway that is asked to admit a job and the gateway that owns the
user's admission partition: the request (with the job's records built) and the decision.

Both are JSON records keyed by user id, encoded and decoded by orjson. The request is
appended to `{prefix}.admissions` (broker append time); the decision to the same partition
number of `{prefix}.admission-decisions`, inside the owner's transaction, where a later
owner of the partition rebuilds the user's recent state from it. The requester's copy goes,
in the same transaction, to its own partition of `{prefix}.admission-replies` (the request
names it), so each gateway reads only its own answers; a gateway that asked itself is
answered in-process and gets no copy. The job's two records travel inside the request as
JSON objects, not as escaped JSON text: the requester encodes the request once, the owner
decodes it once and encodes each record once more as the value it appends.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import orjson

from shared.topics import Priority

HEADER_REPLY_TO = "reply_to"


def admissions_topic(prefix: str) -> str:
    return f"{prefix}.admissions"


def decisions_topic(prefix: str) -> str:
    return f"{prefix}.admission-decisions"


def replies_topic(prefix: str) -> str:
    return f"{prefix}.admission-replies"


def reply_partition(instance: str, partitions: int) -> int:
    """The replies partition an instance reads: its ordinal where its id ends in one (a
    StatefulSet pod, `gateway-1`), else a hash of the id. Two instances on one partition
    each still pick out their own replies by the reply-to header."""
    ordinal = instance.rpartition("-")[2]
    if ordinal.isdigit():
        return int(ordinal) % partitions
    return zlib.crc32(instance.encode()) % partitions


def admission_group(prefix: str) -> str:
    """One consumer group of every gateway on the admission topic: one owner per partition."""
    return f"{prefix}-gateway-admission"


def transactional_id_prefix(prefix: str) -> str:
    """What every admission transactional id starts with (one ACL grants them all)."""
    return f"{prefix}-admission-"


# Transactional producers per admission partition, used in turn (admission_lane.py).
PRODUCERS_PER_PARTITION = 2


def transactional_id(prefix: str, partition: int, lane: int = 0) -> str:
    """The ids of an admission partition's producers (`lane` < PRODUCERS_PER_PARTITION): a
    new owner's producers fence the previous owner's. The first is the id one producer per
    partition had, so an owner of either kind fences the other."""
    suffix = f".{lane}" if lane else ""
    return f"{transactional_id_prefix(prefix)}{partition}{suffix}"


# Datetimes as the records' own models write them (RFC 3339, "Z" for UTC).
JSON_OPTIONS = orjson.OPT_UTC_Z


def encode_record(document: dict[str, Any]) -> bytes:
    """One record's value: a job record built as a dict, or one read back from a request."""
    return orjson.dumps(document, option=JSON_OPTIONS)


def _to_json(record: AdmissionRequest | Decision) -> bytes:
    # A shallow dict, not `asdict`'s deep copy, which cost more than the encoding did.
    names = _FIELDS[type(record)]
    return orjson.dumps({n: getattr(record, n) for n in names}, option=JSON_OPTIONS)


def _from_json(raw: bytes) -> dict[str, Any]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data


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
    accepted: dict[str, Any]  # the job.accepted record
    run: dict[str, Any]  # the job.run record
    trace_id: str
    # The requester's partition of the replies topic; -1: it reads the decisions topic.
    reply_partition: int = -1

    def to_bytes(self) -> bytes:
        return _to_json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AdmissionRequest:
        """Raises ValueError, KeyError or TypeError for a record that is not a request."""
        data = _from_json(raw)
        if not isinstance(data.get("accepted"), dict) or not isinstance(data.get("run"), dict):
            raise TypeError("a request carries its job's two records as objects")
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
        data = _from_json(raw)
        data["outcome"] = Outcome(data["outcome"])
        data["priority"] = Priority(data["priority"])
        return cls(**data)


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (AdmissionRequest, Decision)
}
