"""Running again, as the next attempt, a job whose attempt Kafka lost under it."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.errors import KafkaError

from services.streamer.job import Running
from services.streamer.ports import KafkaProbe
from shared.retry import retry_until_done


def next_attempt(running: Running) -> Running:
    """The same record (source, offset, owner) as its next attempt, not yet cancelled."""
    job = running.job
    data = job.data.model_copy(update={"attempt": job.data.attempt + 1})
    return Running(
        job=job.model_copy(update={"data": data}),
        source=running.source,
        tp=running.tp,
        offset=running.offset,
        owner=running.owner,
    )


class Reruns:
    """Offers a lost attempt's job again once Kafka answers.

    Waiting first keeps an outage from burning the job's attempts one after another.
    """

    def __init__(self, kafka_answers: KafkaProbe, *, delays_s: tuple[float, float]) -> None:
        self.kafka_answers = kafka_answers
        self.delays_s = delays_s

    async def when_kafka_answers(
        self, running: Running, admit: Callable[[Running, int], None]
    ) -> None:
        first_delay_s, max_delay_s = self.delays_s
        await retry_until_done(
            self.kafka_answers,
            (KafkaError,),
            what="reaching Kafka",
            first_delay_s=first_delay_s,
            max_delay_s=max_delay_s,
        )
        again = next_attempt(running)
        admit(again, again.job.data.priority.rank)
