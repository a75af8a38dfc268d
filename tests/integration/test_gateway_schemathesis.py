"""Schemathesis against the served OpenAPI document: the gateway over the real Kafka, its reads
forwarded to the real results service over the real PostgreSQL, its live streams proxied to
the real notifier. Every operation, for a user and for an admin: no 5xx, every answer as
documented (status, content type, body schema, headers), auth enforced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from services.gateway.routes import build_document
from services.notifier.app import NotifierService
from services.results.app import ResultsService
from shared.auth import DEFAULT_SCOPES, SCOPE_ADMIN
from tests.integration.gateway_harness import (
    StartGateway,
    Tokens,
    start_gateway,
    tokens,
)
from tests.integration.notifier_support import notifier_settings, running_notifier
from tests.integration.results_kit import running, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
__all__ = ["start_gateway", "tokens"]  # fixtures

EXAMPLES = 12  # per operation and generation mode: the whole run stays at a few seconds


# Operations whose valid inputs obey rules JSON Schema cannot state: schema-valid data may be
# rightly refused there (4xx), so only "schema-valid is accepted" is not checked for them.
SEMANTIC_RULES = {
    "POST /api/v1/jobs": "metadata is free JSON whose strings may not hold U+0000",
    "GET /api/v1/jobs": "cursor is opaque: only a next_cursor that was served is valid",
    "GET /api/v1/analytics": "since must be before until",
    "GET /api/v1/analytics/series": "since before until, and at most 1440 steps between them",
    "PUT /api/v1/webhook": "the URL is http(s) with a host that is not, and does not resolve"
    " to, a private address",
}

# Operations not fuzzed here, and why.
NOT_FUZZED = {
    "POST /v1/chat/completions": "a valid request runs a job to its end, which needs the"
    " streamer: tests/e2e/test_openai_compat.py drives it with the openai package",
}


def make_check(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    token: str,
    excluded: list[Any],
) -> Callable[[], None]:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            excluded_checks=excluded,
        )

    return check  # type: ignore[no-any-return]


def fuzz(base_url: str, token: str, fuzzed: set[str]) -> list[str]:
    """Every operation of the served document, positive then negative data; the failures."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in NOT_FUZZED:
            continue
        fuzzed.add(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            excluded: list[Any] = []
            if mode is GenerationMode.POSITIVE and operation.label in SEMANTIC_RULES:
                excluded.append(positive_data_acceptance)
            if mode is GenerationMode.NEGATIVE:
                # Unknown query parameters are ignored, as HTTP APIs commonly do; negative data
                # still must never give a 5xx or an undocumented answer.
                excluded.append(negative_data_rejection)

            check = make_check(operation, mode, base_url, token, excluded)

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to make invalid: no parameters, no body
            except Exception as exc:  # a failure group: report them all, then fail
                inner = getattr(exc, "exceptions", ())
                failures.append(f"{operation.label} [{mode.value}]: {exc} {inner}")
    return failures


@pytest.fixture
async def results(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    async with running(
        settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    ) as service:
        yield service


@pytest.fixture
async def notifier(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> AsyncIterator[NotifierService]:
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_pending_subscribe_s=0.2
    )
    async with running_notifier(settings) as service:
        yield service


# schemathesis's own strategies draw from `random`; that is its business, and only that is muted.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_every_operation_answers_as_documented_and_never_5xx(
    start_gateway: StartGateway,
    tokens: Tokens,
    results: ResultsService,
    notifier: NotifierService,
) -> None:
    gw = await start_gateway(
        results_url=f"http://127.0.0.1:{results.port}",
        notifier_sse_url=f"http://127.0.0.1:{notifier.sse_port}",
        gateway_submissions_per_minute=0,
        gateway_max_in_flight=0,
        gateway_cancels_per_minute=0,
    )
    fuzzed: set[str] = set()
    failures: list[str] = []
    for token in (tokens("fuzzer"), tokens("fuzz-admin", (*DEFAULT_SCOPES, SCOPE_ADMIN))):
        # The servers run on this loop; schemathesis's blocking client runs beside it.
        failures += await asyncio.to_thread(fuzz, gw.url, token, fuzzed)
    assert not failures, "\n\n".join(failures)
    documented = {
        f"{method.upper()} {path}"
        for path, item in build_document(sse=True)["paths"].items()
        for method in item
    }
    # schemathesis leaves out the document it was loaded from; everything else is fuzzed.
    assert fuzzed == documented - {"GET /api/v1/openapi.json", *NOT_FUZZED}, "the live stream's too"
