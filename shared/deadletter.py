"""Dead-letter records for what cannot be processed: the original bytes and the reason."""

from __future__ import annotations

import json

from shared.contracts import DeadLetterData, JobDeadLettered


def poison_record(
    value: bytes | None,
    reason: str,
    error_type: str,
    topic: str,
    partition: int,
    offset: int,
) -> JobDeadLettered:
    """The DLQ record for a record its consumer cannot read; nothing of it is lost."""
    return JobDeadLettered(
        job_id=job_id_of(value),
        data=DeadLetterData(
            reason=reason,
            error_type=error_type,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original=(value or b"").decode("utf-8", errors="replace"),
        ),
    )


def job_id_of(value: bytes | None) -> str:
    """The job id of a record too broken to parse, if its JSON still says it."""
    try:
        job_id = json.loads(value or b"").get("job_id")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deep
        return "unknown"
    return job_id if isinstance(job_id, str) and job_id else "unknown"
