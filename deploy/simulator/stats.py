"""Counters of what the simulator did, served at `GET /_sim/stats` for tests and benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Stats:
    requests_total: int = 0  # every POST /v1/chat/completions
    completions_total: int = 0  # non-streamed answers sent whole
    completions_cancelled_by_client: int = 0  # non-streamed: client hung up while waiting
    streams_started: int = 0
    streams_completed: int = 0  # ended with [DONE]
    streams_cut: int = 0  # closed on purpose without [DONE] (cut_after, drop_rate)
    streams_hung: int = 0  # stalled on purpose (hang_after)
    streams_cancelled_by_client: int = 0  # the client closed the connection mid-stream
    streams_active: int = 0  # open right now (a gauge: reset leaves it)
    tokens_sent: int = 0
    errors_by_status: Counter[int] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["errors_by_status"] = {str(k): v for k, v in sorted(self.errors_by_status.items())}
        out["errors_total"] = sum(self.errors_by_status.values())
        return out

    def reset(self) -> None:
        active = self.streams_active
        for f in fields(self):
            if f.name != "errors_by_status":
                setattr(self, f.name, 0)
        self.errors_by_status.clear()
        self.streams_active = active
