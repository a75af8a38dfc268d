"""The Python client of streamjobs: `AsyncClient` (asyncio) and `Client` (blocking).

from shared.client import Client
with Client() as client:  # STREAMJOBS_URL / STREAMJOBS_TOKEN, or .state/stack.env
    job = client.submit("Explain Kafka partitions.", priority="high")
    for item in client.follow(job):
        ...
"""

from shared.client.aio import AsyncClient
from shared.client.errors import (
    ApiError,
    CannotConnect,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    StreamjobsError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from shared.client.follow import Backoff, Follow
from shared.client.stream import Chunk, Event
from shared.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Backoff",
    "CannotConnect",
    "Chunk",
    "Client",
    "Conflict",
    "Event",
    "Follow",
    "Forbidden",
    "NotFound",
    "RateLimited",
    "StreamjobsError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]
