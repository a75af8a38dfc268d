"""Connection caps: per notifier process and per user, shared by the WebSocket and SSE endpoints.

A socket counts toward the process cap from the moment it is accepted (before
it has authenticated), and toward its user's cap once the token is known.
"""

from __future__ import annotations


class TooManyConnections(Exception):
    """A cap is reached; the client may try again later (or close another connection)."""

    retriable = True

    def __init__(self, per_user: bool, limit: int) -> None:
        what = "connections of this user" if per_user else "connections on this notifier"
        super().__init__(f"at most {limit} {what}")
        self.per_user = per_user
        self.limit = limit


class ConnectionLimits:
    def __init__(self, max_total: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_user = max_per_user
        self.total = 0
        self._per_user: dict[str, int] = {}

    def open(self) -> None:
        """Count a new connection; raises `TooManyConnections` (nothing counted) past the cap."""
        if self.total >= self.max_total:
            raise TooManyConnections(False, self.max_total)
        self.total += 1

    def close(self) -> None:
        self.total -= 1

    def bind(self, user_id: str) -> None:
        """Count an open connection toward its user; raises `TooManyConnections` past the cap."""
        held = self._per_user.get(user_id, 0)
        if held >= self.max_per_user:
            raise TooManyConnections(True, self.max_per_user)
        self._per_user[user_id] = held + 1

    def unbind(self, user_id: str) -> None:
        held = self._per_user.get(user_id, 0) - 1
        if held > 0:
            self._per_user[user_id] = held
        else:
            self._per_user.pop(user_id, None)

    def of_user(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)
