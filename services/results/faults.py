"""Why a batch write failed, and whether trying the same records again can help.

A lost or busy server is retried with the records as they are; anything else was
caused by what the records hold, so retrying them unchanged would stall the
partition for good: the persister splits the batch instead and dead-letters the
record that still fails alone.
"""

from __future__ import annotations

import asyncpg

# Failures of the connection itself: the server is down, restarting or unreachable.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)
# The server is there but could not take the transaction now (deadlock, serialization,
# too many connections, a full disk), or it is not the database we expect (a missing table
# or column, no privilege, a read-only standby): records are parameters, never SQL text,
# so none of these is a record's doing, and dead-lettering for them would empty the topics.
_BUSY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.SyntaxOrAccessError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
_REASON_CHARS = 1000


class WriteFault(Exception):
    """A batch write failed; `retriable` says whether the same records may succeed later."""

    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.kind = kind  # connection | database | record
        self.cause = cause

    @property
    def retriable(self) -> bool:
        return self.kind == "connection"

    @property
    def reason(self) -> str:
        """The cause, short enough for a DLQ record."""
        text = str(self)
        return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"

    @property
    def error_type(self) -> str:
        return type(self.cause).__name__


def classify(exc: Exception) -> WriteFault:
    """Sort a write failure: the connection, the database refusing a value, or our own code."""
    # asyncpg's client-side DataError (a value it cannot encode) is an InterfaceError too,
    # but it comes from a record, not the connection: ValueError says so.
    if isinstance(exc, ValueError):
        return WriteFault("database" if isinstance(exc, asyncpg.InterfaceError) else "record", exc)
    if isinstance(exc, CONNECTION_ERRORS + _BUSY_ERRORS):
        return WriteFault("connection", exc)
    if isinstance(exc, asyncpg.PostgresError):
        return WriteFault("database", exc)
    return WriteFault("record", exc)
