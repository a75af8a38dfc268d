"""The two admission topics, created where missing: requests and decisions, one partition
count (a user's decisions share the number of the partition its requests are on)."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.gateway.admission_records import admissions_topic, decisions_topic
from shared.kafka import JOB_TOPIC_CONFIGS, KafkaOptions, raise_refused, with_admin

log = logging.getLogger(__name__)


async def ensure_admission_topics(
    bootstrap: str,
    prefix: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
    security: KafkaOptions | None = None,
    timeout_s: float = 30.0,
) -> None:
    durable = {"min.insync.replicas": str(min_insync_replicas)}
    configs = {
        # The broker's clock judges a request's accept_by, as it does a job command's.
        admissions_topic(prefix): {**JOB_TOPIC_CONFIGS, **durable},
        decisions_topic(prefix): durable,
    }

    async def create_missing(admin: AIOKafkaAdminClient, _deadline: float) -> None:
        missing = [t for t in configs if t not in set(await admin.list_topics())]
        if not missing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # another gateway was first
            response = await admin.create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=partitions,
                        replication_factor=replication_factor,
                        topic_configs=configs[t],
                    )
                    for t in missing
                ]
            )
            raise_refused(response)
        log.info("created topics %s", missing)

    await with_admin(bootstrap, create_missing, timeout_s=timeout_s, security=security)
