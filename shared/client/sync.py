"""`Client`: `AsyncClient` for code without an event loop. Each call runs the async one on a
loop of the client's own (`asyncio.Runner`), so both behave alike; not for use inside a
running event loop (use `AsyncClient` there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from shared.api import (
    Analytics,
    CancelAccepted,
    JobAcceptedView,
    JobPage,
    JobResult,
    JobTypeView,
    JobView,
    StreamSnapshot,
)
from shared.client.aio import AsyncClient
from shared.client.stream import Chunk, Event

T = TypeVar("T")


async def _wait(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Client:
    """The same methods as `AsyncClient`, blocking; `follow` and `list` are plain iterators."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        """`options` are those of `AsyncClient` (ws_url, timeout_s, env_file, backoff)."""
        self._runner = asyncio.Runner()
        self.aio = AsyncClient(url, token, **options)

    def _run(self, awaitable: Awaitable[T]) -> T:
        return self._runner.run(_wait(awaitable))

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(anext(items))
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                self._run(close())

    def close(self) -> None:
        self._run(self.aio.close())
        self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def submit(self, prompt: str, **options: Any) -> JobAcceptedView:
        """See `AsyncClient.submit` for the options."""
        return self._run(self.aio.submit(prompt, **options))

    def get(self, job_id: str) -> JobView:
        return self._run(self.aio.get(job_id))

    def cancel(self, job_id: str) -> CancelAccepted:
        return self._run(self.aio.cancel(job_id))

    def retry(self, job_id: str, *, idempotency_key: str | None = None) -> JobAcceptedView:
        """See `AsyncClient.retry`."""
        return self._run(self.aio.retry(job_id, idempotency_key=idempotency_key))

    def snapshot(self, job_id: str) -> StreamSnapshot:
        return self._run(self.aio.snapshot(job_id))

    def result(self, job_id: str, *, wait_s: float = 0.0) -> JobResult:
        return self._run(self.aio.result(job_id, wait_s=wait_s))

    def list_page(self, **filters: Any) -> JobPage:
        return self._run(self.aio.list_page(**filters))

    def analytics(self, **query: Any) -> Analytics:
        """See `AsyncClient.analytics` for the query (since, until, group_by, bucket)."""
        return self._run(self.aio.analytics(**query))

    def job_types(self) -> Sequence[JobTypeView]:
        return self._run(self.aio.job_types())

    def follow(
        self, job: str | JobAcceptedView, *, ws_url: str | None = None
    ) -> Iterator[Chunk | Event]:
        return self._iterate(aiter(self.aio.follow(job, ws_url=ws_url)))

    def text(self, job: str | JobAcceptedView) -> tuple[str, Event]:
        return self._run(self.aio.text(job))

    def list(self, *, page_size: int = 50, **filters: Any) -> Iterator[JobView]:
        return self._iterate(self.aio.list(page_size=page_size, **filters))
