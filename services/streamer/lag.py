"""The consumer lag gauge: records not yet finished per job topic, sampled in a loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka.errors import KafkaError

from services.streamer.intake import Intake
from services.streamer.metrics import StreamerMetrics
from shared.topics import PRIORITY_ORDER, job_topic, retry_topic

log = logging.getLogger(__name__)


async def report_lag(
    intakes: Mapping[str, Intake], metrics: StreamerMetrics, prefix: str, interval_s: float
) -> None:
    bands = {job_topic(p, prefix): p.value for p in PRIORITY_ORDER}
    bands[retry_topic(prefix)] = "retry"
    while True:
        for intake in intakes.values():
            try:
                lags = await intake.lag()
            except KafkaError as exc:  # a rebalance in progress: next round
                log.debug("lag not available: %r", exc)
                continue
            for topic, lag in lags.items():
                metrics.consumer_lag.labels(topic, bands.get(topic, "")).set(lag)
        await asyncio.sleep(interval_s)
