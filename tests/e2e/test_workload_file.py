"""A workload file of the operator's own: a job type and prices added with no code change."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from deploy.localstack.stack import Stack
from shared.auth import issue_token
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

SYSTEM_PROMPT = "You triage support tickets. Answer with one JSON object only."
TRIAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "outage", "question"]},
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": ["bug", "feature"]}},
                "required": ["kind"],
                "additionalProperties": False,
            },
        },
        "summary": {"type": "string"},
    },
    "required": ["category", "tags", "summary"],
    "additionalProperties": False,
}
# Round prices, so the expected cost is plain arithmetic: USD per million tokens.
WORKLOADS = f"""
[job_types.ticket_triage]
description = "Sort a support ticket into a category, with tags."
system_prompt = "{SYSTEM_PROMPT}"
breakdown = ["category", "tags[].kind"]

[job_types.ticket_triage.output_schema]
type = "object"
required = ["category", "tags", "summary"]
additionalProperties = false

[job_types.ticket_triage.output_schema.properties]
category = {{ type = "string", enum = ["billing", "outage", "question"] }}
summary = {{ type = "string" }}

[job_types.ticket_triage.output_schema.properties.tags]
type = "array"

[job_types.ticket_triage.output_schema.properties.tags.items]
type = "object"
required = ["kind"]
additionalProperties = false
properties = {{ kind = {{ type = "string", enum = ["bug", "feature"] }} }}

[models."gpt-4o-mini"]
price = {{ input = 1.0, output = 2.0, cached_input = 0.25 }}
[[models."gpt-4o-mini".upstreams]]
name = "simulator"

# Any other model on the same simulator, priced nowhere.
[models."*"]
[[models."*".upstreams]]
name = "simulator"
"""
PROMPT = "My invoice charges me twice this month. [[sim cached=7]]"


@pytest.fixture
def custom(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    """Every service reading the same operator's workload file."""
    path = test_state_dir / "workloads.toml"
    path.write_text(WORKLOADS)
    with running_system(
        test_state_dir,
        kafka_bootstrap,
        database_url,
        topic_prefix=topic_prefix,
        env={"STREAMJOBS_WORKLOADS_FILE": str(path)},
    ) as stack:
        yield stack


async def get_json(url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


async def straight_from_the_simulator(simulator: str, model: str, schema: dict[str, Any]) -> str:
    """What the LLM answers to the type's system prompt and schema, asked directly."""
    async with openai.AsyncOpenAI(
        base_url=f"{simulator}/v1", api_key="sim", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model=model,
            max_tokens=500,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": PROMPT},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "ticket_triage", "strict": True, "schema": schema},
            },
        )
    content = completion.choices[0].message.content
    assert content is not None
    return content


def counted(parsed: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The breakdown of one parsed answer, counted here from the document itself."""
    category = {"billing": 0, "outage": 0, "question": 0}
    category[parsed["category"]] += 1
    kinds = {"bug": 0, "feature": 0}
    for tag in parsed["tags"]:
        kinds[tag["kind"]] += 1
    return {"category": category, "tags[].kind": kinds}


async def test_a_job_type_added_in_the_workload_file_is_listed_run_and_broken_down(
    custom: Stack,
) -> None:
    urls = custom.urls()
    token = issue_token(custom.auth_secret(), f"triage-{uuid.uuid4().hex[:8]}")

    status, listed = await get_json(f"{urls['gateway']}/api/v1/job-types", token)
    assert status == 200
    assert [t["name"] for t in listed] == ["ticket_triage"], "only the file's types exist"
    (triage,) = listed
    assert triage["structured"] is True
    assert triage["breakdown"] == ["category", "tags[].kind"]
    assert triage["output_schema"] == TRIAGE_SCHEMA

    accepted = await submit(
        urls["gateway"],
        token,
        prompt=PROMPT,
        job_type="ticket_triage",
        config={"model": "gpt-4o-mini", "max_tokens": 500},
    )
    result = await stored_result(urls["gateway"], token, accepted["job_id"])
    assert result["status"] == "completed", result
    # The simulator's answer is seeded by the messages it got: the same text as asking it
    # directly with the type's system prompt means the streamer sent that prompt.
    assert result["response"] == await straight_from_the_simulator(
        urls["simulator"], "gpt-4o-mini", triage["output_schema"]
    )
    assert result["parse_error"] is None
    assert result["breakdown"] == counted(result["parsed_response"])

    # Cached prompt tokens reported by the upstream are priced at the cached rate.
    usage = result["usage"]
    assert usage["cached_tokens"] == 7 < usage["prompt_tokens"]
    expected = (
        Decimal(usage["prompt_tokens"] - 7) * Decimal("1.0")
        + 7 * Decimal("0.25")
        + Decimal(usage["completion_tokens"]) * Decimal("2.0")
    ) / 1_000_000
    assert Decimal(str(result["estimated_cost_usd"])) == expected.quantize(Decimal("1e-8"))

    async def analytics() -> dict[str, Any] | None:
        status, body = await get_json(f"{urls['gateway']}/api/v1/analytics", token)
        assert status == 200, body
        return body if body["breakdown"] else None

    body = await wait_for(analytics, timeout=30, message="analytics breakdown")
    assert body["breakdown"] == {"ticket_triage": result["breakdown"]}
    assert body["totals"]["unpriced_results"] == 0


async def test_a_model_without_a_price_costs_null_is_counted_and_leaves_other_costs_alone(
    custom: Stack,
) -> None:
    urls = custom.urls()
    token = issue_token(custom.auth_secret(), f"pricing-{uuid.uuid4().hex[:8]}")

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{urls['gateway']}/api/v1/jobs",
            json={"prompt": "x", "job_type": "analysis"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 422, "a type of the packaged defaults is not in this file"
        assert (await resp.json())["type"].endswith("unknown-job-type")

    jobs = {}
    for model in ("model-nobody-priced", "gpt-4o-mini"):
        accepted = await submit(
            urls["gateway"],
            token,
            prompt="Printer on fire. [[sim tokens=20]]",
            job_type="ticket_triage",
            config={"model": model, "max_tokens": 500},
        )
        jobs[model] = await stored_result(urls["gateway"], token, accepted["job_id"])
    unpriced, priced = jobs["model-nobody-priced"], jobs["gpt-4o-mini"]
    assert unpriced["status"] == priced["status"] == "completed"
    assert unpriced["estimated_cost_usd"] is None
    usage = priced["usage"]
    assert Decimal(str(priced["estimated_cost_usd"])) == (
        (Decimal(usage["prompt_tokens"]) * 1 + Decimal(usage["completion_tokens"]) * 2) / 1_000_000
    ).quantize(Decimal("1e-8"))

    status, body = await get_json(f"{urls['gateway']}/api/v1/analytics", token)
    assert status == 200
    assert body["totals"]["unpriced_results"] == 1
    assert body["totals"]["cost_usd"] == pytest.approx(priced["estimated_cost_usd"])

    async def warned() -> bool | None:
        async with aiohttp.ClientSession() as http, http.get(f"{urls['results']}/metrics") as r:
            text = await r.text()
        line = 'streamjobs_results_unpriced_total{model="model-nobody-priced"} 1.0'
        return True if line in text else None

    await wait_for(warned, timeout=15, message="the unpriced result counted")
