"""`AsyncClient`: the REST API and the live stream of streamjobs, typed by `shared.api`.

Built on aiohttp, which every service already uses for HTTP and which also speaks the
WebSocket, so one session carries the REST calls, the notifier socket and the SSE fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel, TypeAdapter

from shared.api import (
    API_PREFIX,
    HEADER_IDEMPOTENCY_KEY,
    Analytics,
    CancelAccepted,
    JobAcceptedView,
    JobPage,
    JobResult,
    JobTypeView,
    JobView,
    StreamSnapshot,
)
from shared.client.config import resolve
from shared.client.errors import CannotConnect, Conflict, NotFound, from_answer
from shared.client.follow import Backoff, Follow
from shared.client.stream import Event
from shared.contracts import ModelConfig
from shared.lifecycle import JobStatus
from shared.topics import Priority

M = TypeVar("M", bound=BaseModel)
_JOB_TYPES = TypeAdapter(list[JobTypeView])


def _query(values: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters as the API reads them: unset ones left out, moments in ISO 8601."""
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None or value == ():
            continue
        if isinstance(value, datetime):
            params[name] = value.isoformat()
        elif isinstance(value, tuple | list):
            params[name] = ",".join(map(str, value))
        else:
            params[name] = str(value)
    return params


class AsyncClient:
    """A client of one gateway. `url`, `token` and `ws_url` default to `STREAMJOBS_URL`,
    `STREAMJOBS_TOKEN` and `STREAMJOBS_WS_URL`, else to `.state/stack.env` (`make run`).

    Use it as `async with AsyncClient() as client:`, or call `close()`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        ws_url: str | None = None,
        timeout_s: float = 30.0,
        env_file: Path | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        connection = resolve(url, token, ws_url, env_file=env_file)
        self.url = connection.url
        self.token = connection.token
        self.ws_url = connection.ws_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.backoff = backoff
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop it was made in.
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _job_path(self, job_id: str, tail: str = "") -> str:
        return f"{API_PREFIX}/jobs/{quote(job_id, safe='')}{tail}"

    async def _call(self, model: type[M], method: str, path: str, **request: Any) -> M:
        """`_send`, its answer read as `model`."""
        return model.model_validate_json(await self._send(method, path, **request))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        data = None if body is None else orjson.dumps(body)
        sent = {"Content-Type": "application/json", **(headers or {})} if data else headers
        try:
            async with self.http.request(
                method, self.url + path, data=data, params=params, headers=sent
            ) as resp:
                raw = await resp.read()
                if resp.status < 400:
                    return raw
                try:
                    problem = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    problem = {"detail": raw[:200].decode("utf-8", "replace")}
                raise from_answer(resp.status, problem, resp.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = getattr(exc, "os_error", None) or exc or repr(exc)
            raise CannotConnect(f"cannot reach {self.url} ({method} {path}): {why}") from None

    # -- jobs ---------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        job_type: str = "analysis",
        priority: Priority | str = Priority.NORMAL,
        config: ModelConfig | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobAcceptedView:
        """Queue a job; the same `idempotency_key` and body give the same job again."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "job_type": job_type,
            "priority": Priority(priority).value,
        }
        if config is not None:
            body["config"] = (
                config.model_dump(exclude_none=True)
                if isinstance(config, ModelConfig)
                else dict(config)
            )
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {HEADER_IDEMPOTENCY_KEY: idempotency_key} if idempotency_key else None
        return await self._call(
            JobAcceptedView, "POST", f"{API_PREFIX}/jobs", body=body, headers=headers
        )

    async def get(self, job_id: str) -> JobView:
        return await self._call(JobView, "GET", self._job_path(job_id))

    async def cancel(self, job_id: str) -> CancelAccepted:
        """Ask for the job to stop (idempotent); `Conflict` if it already completed or failed."""
        return await self._call(CancelAccepted, "POST", self._job_path(job_id, "/cancel"))

    async def retry(self, job_id: str, *, idempotency_key: str | None = None) -> JobAcceptedView:
        """Run a failed or cancelled job again as a new job with the same inputs (`Conflict`
        for a job queued, running or completed); one `idempotency_key` gives one new job."""
        headers = {HEADER_IDEMPOTENCY_KEY: idempotency_key} if idempotency_key else None
        return await self._call(
            JobAcceptedView, "POST", self._job_path(job_id, "/retry"), headers=headers
        )

    async def snapshot(self, job_id: str) -> StreamSnapshot:
        """The text of the current attempt so far and its last seq."""
        return await self._call(StreamSnapshot, "GET", self._job_path(job_id, "/stream"))

    async def result(self, job_id: str, *, wait_s: float = 0.0) -> JobResult:
        """The stored result. With `wait_s`, a job not ended or not stored yet (`Conflict`,
        `NotFound`: the read side may lag the live stream) is asked again until then."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self._call(JobResult, "GET", self._job_path(job_id, "/result"))
            except (Conflict, NotFound):
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.2)

    async def list_page(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        priority: Priority | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of the caller's jobs, newest first; `next_cursor` asks for the next."""
        params = _query(
            {
                "status": status,
                "job_type": job_type,
                "priority": priority,
                "since": since,
                "until": until,
                "user_id": user_id,
                "limit": limit,
                "cursor": cursor,
            }
        )
        return await self._call(JobPage, "GET", f"{API_PREFIX}/jobs", params=params)

    async def analytics(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: Sequence[str] = (),
        bucket: str | None = None,
    ) -> Analytics:
        params = _query(
            {"since": since, "until": until, "group_by": tuple(group_by), "bucket": bucket}
        )
        return await self._call(Analytics, "GET", f"{API_PREFIX}/analytics", params=params)

    async def job_types(self) -> list[JobTypeView]:
        return _JOB_TYPES.validate_json(await self._send("GET", f"{API_PREFIX}/job-types"))

    def follow(self, job: str | JobAcceptedView, *, ws_url: str | None = None) -> Follow:
        """The job's chunks and events to its final event (see `shared.client.follow`).

        Given the submit answer, its `links.websocket` names the notifier that serves the
        job; else `ws_url`, else the client's `ws_url`. Without any, SSE is used.
        """
        job_id = job if isinstance(job, str) else job.job_id
        link = None if isinstance(job, str) else job.links.websocket
        return Follow(
            self.http,
            self,
            job_id,
            token=self.token,
            ws_url=ws_url or link or self.ws_url,
            sse_url=self.url + self._job_path(job_id, "/events"),
            backoff=self.backoff,
        )

    async def text(self, job: str | JobAcceptedView) -> tuple[str, Event]:
        """Follow the job to its end: the text of its last attempt and its final event."""
        return await self.follow(job).text()

    # Last: inside the class body, `list` names this method from here on.
    async def list(self, *, page_size: int = 50, **filters: Any) -> AsyncGenerator[JobView, None]:
        """Every job matching `filters` (those of `list_page`), walking page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(limit=page_size, cursor=cursor, **filters)
            for job in page.items:
                yield job
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor
