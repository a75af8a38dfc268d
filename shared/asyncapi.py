"""The published contract of our topics: an AsyncAPI document and one JSON Schema per record type.

`python -m shared.asyncapi docs/` writes `docs/asyncapi.json` and
`docs/schemas/<type>.json`; other teams consume our topics from these files
without reading our code. A test keeps the committed files equal to the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared import __version__
from shared.contracts import (
    RECORD_TYPES,
    CancelJob,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    JobRetrying,
    JobStarted,
    RunJob,
    TokenChunk,
)
from shared.topics import (
    PRIORITY_ORDER,
    chunks_topic,
    control_topic,
    dlq_topic,
    events_topic,
    job_topic,
    retry_topic,
)

VERSION = __version__
LifecycleUnion = JobAccepted | JobStarted | JobRetrying | JobCompleted | JobFailed | JobCancelled


def build_spec() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every streamjobs topic, built by FastStream from our models."""
    broker = KafkaBroker()
    for priority in PRIORITY_ORDER:
        broker.publisher(
            job_topic(priority),
            title=f"jobs.{priority.value}",
            description=f"Job requests of priority {priority.value}, keyed by job_id.",
            schema=RunJob,
        )
    broker.publisher(
        retry_topic(),
        title="jobs.retry",
        description="Delayed retries: RunJob with attempt > 1 and not_before.",
        schema=RunJob,
    )
    broker.publisher(
        dlq_topic(),
        title="jobs.dlq",
        description="Jobs and records that failed for good, with the reason.",
        schema=JobDeadLettered,
    )
    broker.publisher(
        control_topic(),
        title="control",
        description="Cancel commands; every streamer reads all of it.",
        schema=CancelJob,
    )
    broker.publisher(
        events_topic(),
        title="events",
        description="Job lifecycle facts, keyed by job_id so each job's events stay in order.",
        schema=LifecycleUnion,
    )
    broker.publisher(
        chunks_topic(),
        title="chunks",
        description="Coalesced token chunks: (job_id, attempt, seq) is unique.",
        schema=TokenChunk,
    )
    spec = AsyncAPI(
        broker,
        title="streamjobs",
        version=VERSION,
        description="Kafka topics of streamjobs. Every record is a JSON envelope "
        "(type, schema_version, event_id, job_id, occurred_at, trace_id, data).",
    )
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return document


def record_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of each record type, by its `type` value."""
    return {name: model.model_json_schema() for name, model in sorted(RECORD_TYPES.items())}


def render(out_dir: Path) -> dict[Path, str]:
    files = {out_dir / "asyncapi.json": json.dumps(build_spec(), indent=2, sort_keys=True) + "\n"}
    for name, schema in record_schemas().items():
        files[out_dir / "schemas" / f"{name}.json"] = (
            json.dumps(schema, indent=2, sort_keys=True) + "\n"
        )
    return files


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1] if len(argv) > 1 else "docs")
    for path, text in render(out_dir).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
