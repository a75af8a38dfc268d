"""The published contract of our topics: an AsyncAPI document and one JSON Schema per record type.

`python -m shared.asyncapi docs/` writes `docs/asyncapi.json` and
`docs/schemas/<type>.json`; other teams consume our topics from these files
without reading our code. A test keeps the committed files equal to the models.
The document is built from the services' own channel declarations (`shared.channels`).
"""

from __future__ import annotations

import functools
import json
import operator
import sys
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from services.gateway.channels import GATEWAY
from services.notifier.channels import NOTIFIER
from services.results.channels import RESULTS
from services.streamer.channels import STREAMER
from shared import __version__
from shared.channels import Channel, Consumer, ServiceChannels
from shared.contracts import RECORD_TYPES

VERSION = __version__
# Every service on Kafka, by the name of its principal.
SERVICES: tuple[ServiceChannels, ...] = (GATEWAY, STREAMER, RESULTS, NOTIFIER)


def _schema(channel: Channel) -> Any:
    """The record type of `channel`, or the union of its types."""
    return functools.reduce(operator.or_, channel.records)


def _description(channel: Channel) -> str:
    return f"{channel.description} Key: {channel.key}."


def _reading(consumer: Consumer) -> str:
    group = consumer.group_name()
    if group is None:
        return "Read with no consumer group: every instance reads every partition."
    return f"Read in a consumer group, by default {group}."


def _subscriber_handler(schema: Any) -> Any:
    """A handler FastStream reads the message schema of; it is never called."""

    async def handler(record: Any) -> None:  # pragma: no cover - never run
        del record

    handler.__annotations__ = {"record": schema, "return": None}
    return handler


def service_broker(service: ServiceChannels) -> KafkaBroker:
    """A broker with a publisher per channel `service` publishes, a subscriber per one it reads."""
    broker = KafkaBroker()
    for channel in service.publishes:
        broker.publisher(
            channel.topic(),
            title=f"{service.service}:{channel.name}:publish",
            description=_description(channel),
            schema=_schema(channel),
        )
    for consumer in service.consumers:
        for channel in consumer.channels:
            broker.subscriber(
                channel.topic(),
                group_id=consumer.group_name(),
                title=f"{service.service}:{channel.name}:{consumer.name}",
                description=f"{_description(channel)} {_reading(consumer)}",
            )(_subscriber_handler(_schema(channel)))
    return broker


def build_spec() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every streamjobs topic, built by FastStream from our models."""
    spec = AsyncAPI(
        *(service_broker(service) for service in SERVICES),
        title="streamjobs",
        version=VERSION,
        description="Kafka topics of streamjobs. Every record but a revocation is a JSON "
        "envelope (type, schema_version, event_id, job_id, occurred_at, trace_id, data).",
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
