"""Which notifier instance serves a job, for its links and the proxied SSE stream.

Notifier instance i of n reads the chunk partitions p with p % n == i
(shared.routing), so a job's instance follows from its id, the chunks topic's partition
count (read from Kafka metadata at start) and the number of notifier URLs configured.
"""

from __future__ import annotations

from shared.routing import notifier_for


class NotifierRoutes:
    def __init__(self, ws_urls: list[str], sse_urls: list[str], *, chunk_partitions: int = 1):
        self.ws_urls = ws_urls
        self.sse_urls = sse_urls
        self.chunk_partitions = chunk_partitions

    def ws_url(self, job_id: str) -> str | None:
        return self._pick(self.ws_urls, job_id)

    def sse_base(self, job_id: str) -> str | None:
        return self._pick(self.sse_urls, job_id)

    def _pick(self, urls: list[str], job_id: str) -> str | None:
        if not urls:
            return None
        if len(urls) == 1:
            return urls[0]
        return urls[notifier_for(job_id, self.chunk_partitions, len(urls))]
