"""Attempts started but not final, carried in the commit metadata of their partition.

When a streamer dies mid-job, the next owner of the partition reads which jobs
were already started and runs them as the next attempt, so a client never sees
two different streams under one attempt number.
"""

from __future__ import annotations

import json

# Kafka's default `offset.metadata.max.bytes` is 4096; stay below it.
MAX_METADATA_BYTES = 4000


def encode(started: dict[int, tuple[str, int]], position: int) -> str:
    """Metadata for a commit at `position`: the started jobs at or after it, oldest first."""
    entries = sorted((o, j, a) for o, (j, a) in started.items() if o >= position)
    text = json.dumps({"started": entries}, separators=(",", ":"))
    while len(text.encode()) > MAX_METADATA_BYTES and entries:
        # Dropping the newest claims: those jobs would rerun under their old attempt number.
        entries.pop()
        text = json.dumps({"started": entries}, separators=(",", ":"))
    return text


def decode(metadata: str | None) -> dict[int, tuple[str, int]]:
    """The claims in a commit's metadata; anything unreadable counts as none."""
    if not metadata:
        return {}
    try:
        entries = json.loads(metadata)["started"]
        return {int(o): (str(j), int(a)) for o, j, a in entries}
    except (ValueError, KeyError, TypeError):
        return {}
