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
    *,
    job_id: str | None = None,
) -> JobDeadLettered:
    """The DLQ record for a record its consumer cannot read; nothing of it is lost."""
    return JobDeadLettered(
        job_id=job_id if job_id is not None else job_id_of(value),
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
    except (ValueError, AttributeError, RecursionError):  # deep nesting is unreadable too
        return "unknown"
    return job_id if isinstance(job_id, str) and job_id else "unknown"


MAX_JOB_ID_CHARS = 256  # far above any id we issue; a longer "id" is noise, not a job


def recover_job_id(key: bytes | None, value: bytes | None) -> str | None:
    """The job id of a record that cannot be processed: its key, else its JSON's `job_id`.

    None when neither is a non-empty id that can travel as a Kafka key (valid UTF-8,
    no lone surrogates), so the caller can tell its owner nothing and only dead-letters.
    """
    if key:
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if 0 < len(text) <= MAX_JOB_ID_CHARS:
            return text
    job_id = job_id_of(value)
    if job_id == "unknown" or len(job_id) > MAX_JOB_ID_CHARS:
        return None
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        return None
    return job_id
