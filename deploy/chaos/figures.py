"""What a chaos run counts, the verdict on it, and how it is shown: a small table and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Any of these above zero fails the run: each is a promise of the design broken.
MUST_BE_ZERO = ("lost", "completed_twice", "gaps", "duplicates")


@dataclass
class Figures:
    rounds: int = 0
    kills: int = 0
    submitted: int = 0  # accepted (202)
    refused: int = 0  # answered 429 or 503: never accepted, so never owed a result
    completed: int = 0
    failed: int = 0
    lost: int = 0  # accepted, yet no final status in the results API within the drain timeout
    completed_twice: int = 0  # more than one final event on the events topic
    gaps: int = 0
    duplicates: int = 0
    clients_resumed: int = 0
    redirects: int = 0
    longest_stall_s: float = 0.0
    jobs_rerun: int = 0  # attempt > 1
    duration_s: float = 0.0
    # Each job that finished twice, its records on the job and events topics in order: what
    # the run says about why (which attempts, which streamer, at which offsets).
    twice: dict[str, list[str]] = field(default_factory=dict)
    # The same for each job lost, its last status in the results API first.
    lost_jobs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in MUST_BE_ZERO)

    def table(self) -> str:
        rows = [
            ("rounds (kills)", f"{self.rounds} ({self.kills})"),
            ("jobs submitted", str(self.submitted)),
            ("refused (429/503)", str(self.refused)),
            ("completed", str(self.completed)),
            ("failed", str(self.failed)),
            ("lost", str(self.lost)),
            ("completed twice", str(self.completed_twice)),
            ("client gaps", str(self.gaps)),
            ("client duplicates", str(self.duplicates)),
            ("clients that resumed", str(self.clients_resumed)),
            ("redirects followed", str(self.redirects)),
            ("longest stall", f"{self.longest_stall_s:.1f} s"),
            ("jobs rerun (attempt > 1)", str(self.jobs_rerun)),
            ("duration", f"{self.duration_s:.0f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}}  {value:>10}" for name, value in rows]
        verdict = (
            "PASS"
            if self.ok
            else "FAIL: "
            + ", ".join(
                f"{name}={getattr(self, name)}" for name in MUST_BE_ZERO if getattr(self, name)
            )
        )
        rule = "  " + "-" * (width + 12)
        return "\n".join([rule, *lines, rule, f"  {verdict}"])

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**asdict(self), "ok": self.ok}, indent=1) + "\n")
