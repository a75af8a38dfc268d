"""The models a submission may name: the upstream registry of the workload file.

The gateway refuses a model no entry (and no catch-all) routes, so a job that no
upstream could run never enters the queue; `GET /api/v1/models` lists the entries
without their servers' URLs or key variables.
"""

from __future__ import annotations

import json

from services.gateway.rejection import Rejection
from shared.api import API_PREFIX, ModelView
from shared.upstreams import Registry

MODELS_PATH = f"{API_PREFIX}/models"


class ModelCatalogue:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.body = json.dumps(
            [
                ModelView(
                    name=entry.name,
                    upstreams=[u.name for u in entry.upstreams],
                    fallback=entry.fallback,
                    on_interrupt=registry.on_interrupt(entry.name),
                    priced=entry.price is not None
                    or all(u.price is not None for u in entry.upstreams),
                ).model_dump(mode="json")
                for entry in registry.models.values()
            ]
        ).encode()

    def refuse(self, model: str) -> Rejection | None:
        """The 422 of a model nothing routes; None when some upstream serves it."""
        if self.registry.knows(model):
            return None
        known = ", ".join(sorted(self.registry.models))
        return Rejection(
            422,
            "unknown-model",
            "Unknown model",
            f"model {model!r} is not configured (one of: {known}); GET {MODELS_PATH} lists them",
            [
                {
                    "loc": ["body", "config", "model"],
                    "msg": f"one of: {known}",
                    "type": "unknown_model",
                }
            ],
            extra={"model": model, "models": MODELS_PATH},
        )
