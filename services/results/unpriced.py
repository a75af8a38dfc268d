"""Results whose model the workload file does not price: counted and logged, never guessed.

The metric's `model` label takes the first `MAX_LABELS` unpriced model names as they are,
then `other`: model names come from users, so the label set must stay bounded. Each name
is logged once (up to `MAX_LOGGED` names remembered), not once per result.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

log = logging.getLogger(__name__)

MAX_LABELS = 20
MAX_LOGGED = 1000
OTHER = "other"


class UnpricedModels:
    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._labels: set[str] = set()
        self._logged: set[str] = set()

    def saw(self, model: str | None) -> None:
        name = model or ""
        if name not in self._labels and len(self._labels) < MAX_LABELS:
            self._labels.add(name)
        self._counter.labels(name if name in self._labels else OTHER).inc()
        if name not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add(name)
            log.warning(
                "model %r has no price in the workload file: its cost is stored as null", name
            )
