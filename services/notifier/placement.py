"""Which jobs this notifier instance serves, and where it sends a client for the others.

Instance `i` of `n` reads only the chunk partitions `shared.routing.owned_partitions(i, n, p)`;
a job whose chunks lie elsewhere is served by `shared.routing.notifier_for`'s instance, and a
client asking here for it is told that instance's public URL. The split is static: an
instance's partitions come back with it when it restarts, and a new instance count needs
every notifier restarted with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.notifier.frames import Frame, control, error_frame
from shared.routing import notifier_for, owned_partitions


@dataclass(slots=True)
class Placement:
    instance: int = 0
    instances: int = 1
    ws_urls: list[str] = field(default_factory=list)
    sse_urls: list[str] = field(default_factory=list)
    partitions: int = 0  # of the chunks topic, from Kafka's metadata at start; 0 = not known yet

    @property
    def split(self) -> bool:
        return self.instances > 1

    def owned(self, partitions: int) -> list[int]:
        """Fix the chunks topic's partition count; the partitions this instance reads."""
        self.partitions = partitions
        return owned_partitions(self.instance, self.instances, partitions)

    def owner(self, job_id: str) -> int:
        if not self.split or self.partitions == 0:
            return self.instance
        return notifier_for(job_id, self.partitions, self.instances)

    def serves(self, job_id: str) -> bool:
        return self.owner(job_id) == self.instance

    def ws_url(self, owner: int) -> str | None:
        return self.ws_urls[owner] or None if owner < len(self.ws_urls) else None

    def sse_url(self, owner: int) -> str | None:
        return self.sse_urls[owner] or None if owner < len(self.sse_urls) else None

    def redirect_frame(self, job_id: str, owner: int) -> Frame:
        """What a WebSocket client subscribing here to another instance's job is told."""
        channel = f"job:{job_id}"
        url = self.ws_url(owner)
        if url is None:
            return error_frame(
                "wrong_instance",
                f"job served by notifier instance {owner}, whose public URL is not configured",
                channel=channel,
                instance=owner,
            )
        return control("redirect", channel=channel, job_id=job_id, url=url, instance=owner)
