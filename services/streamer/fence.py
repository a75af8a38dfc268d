"""The priority fence: a lower band's job starts only once every higher band is fetched.

Jobs of a band wait in memory only as far as the intake fetched them; a busy intake can
leave an urgent record in Kafka while free slots go to normal jobs already fetched. So a
job below the top band starts only right after Kafka was asked where the higher bands'
partitions end, and only if the intake has read them that far. Until it has, the lower
bands' partitions are held back so the fetch brings the higher bands first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

# Where partitions end now: the offset after their last committed record.
EndOffsets = Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, int]]]


class Verdict(enum.Enum):
    CLEAR = "clear"  # every higher band is fetched as far as Kafka had it when asked
    UNSEEN = "unseen"  # a higher band has records the intake has not fetched yet
    STALE = "stale"  # Kafka must be asked first


def unseen(
    ends: Mapping[TopicPartition, int],
    higher: Mapping[TopicPartition, int],
    seen: Callable[[TopicPartition], int | None],
    waiting: Callable[[int], int],
) -> list[TopicPartition]:
    """The partitions of `higher` (partition -> band) fetched short of their `ends`.

    A band with jobs waiting in memory counts as seen: its queue head is older than any
    record still in Kafka, so a lower job that beats that head (by aging) beats them too.
    """
    out = []
    for tp, band in higher.items():
        if waiting(band):
            continue
        position = seen(tp)
        if position is None or position < ends.get(tp, 0):
            out.append(tp)
    return out


class PriorityFence:
    """Tells the dispatch loop whether a job of a given band may start now.

    `bands()` maps the intake's assigned partitions to their band, `seen(tp)` is how far
    the intake has handed records of a partition on, `waiting(band)` how many jobs of a
    band wait in memory. Ends read from Kafka are fresh until the dispatch loop's next
    pass spends them: a later start asks again, so no record appended meanwhile is passed.
    """

    def __init__(
        self,
        *,
        bands: Callable[[], Mapping[TopicPartition, int]],
        seen: Callable[[TopicPartition], int | None],
        end_offsets: EndOffsets,
        waiting: Callable[[int], int],
        on_check: Callable[[], None] = lambda: None,
        timeout_s: float = 5.0,
        retry_s: float = 0.5,
    ) -> None:
        self.bands = bands
        self.seen = seen
        self.end_offsets = end_offsets
        self.waiting = waiting
        self.on_check = on_check
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.wake: Callable[[], None] = lambda: None  # the dispatch loop's, set by it
        self._ends: dict[TopicPartition, int] | None = None
        self._check: asyncio.Task[None] | None = None
        # While set: the band from which on partitions are held back, and the ends the
        # intake must reach before they fetch again.
        self._holding: int | None = None
        self._held_ends: dict[TopicPartition, int] = {}

    def _higher(self, rank: int) -> dict[TopicPartition, int]:
        return {tp: band for tp, band in self.bands().items() if band < rank}

    def verdict(self, rank: int) -> Verdict:
        """Whether a job of band `rank` may start now."""
        higher = self._higher(rank)
        if not higher:
            return Verdict.CLEAR
        ends = self._ends
        if ends is None or not higher.keys() <= ends.keys():
            return Verdict.STALE
        if unseen(ends, higher, self.seen, self.waiting):
            return Verdict.UNSEEN
        return Verdict.CLEAR

    def request(self, rank: int) -> None:
        """Ask Kafka where the partitions of bands above `rank` end; wakes the loop after."""
        if self._check is not None:
            return
        partitions = sorted(self._higher(rank))
        self._check = asyncio.create_task(self._read_ends(partitions))

    async def _read_ends(self, partitions: list[TopicPartition]) -> None:
        try:
            self.on_check()
            async with asyncio.timeout(self.timeout_s):
                self._ends = await self.end_offsets(partitions)
        except (KafkaError, TimeoutError) as exc:
            # No lower job starts meanwhile: Kafka must answer before one may.
            log.warning("end offsets not read (%r); asking again in %.1fs", exc, self.retry_s)
            await asyncio.sleep(self.retry_s)
        finally:
            self._check = None
            self.wake()

    def spend(self) -> None:
        """End of a dispatch pass: the ends read are not fresh any more."""
        self._ends = None

    def hold(self, rank: int) -> None:
        """Hold back bands `rank` and lower until the intake reached the ends just read."""
        self._holding = rank
        self._held_ends = dict(self._ends or {})

    def holds_back(self, band: int) -> bool:
        """Whether the intake should leave `band`'s partitions paused for now."""
        return self._holding is not None and band >= self._holding

    def progressed(self) -> None:
        """The intake handed on what one fetch brought: release the hold once it is met."""
        if self._holding is None:
            return
        higher = self._higher(self._holding)
        if not unseen(self._held_ends, higher, self.seen, self.waiting):
            self._holding = None
            self._held_ends = {}
            self.wake()

    async def close(self) -> None:
        task, self._check = self._check, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
