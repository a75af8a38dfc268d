"""A chat messages job through the whole system: the LLM receives the conversation and every
field set exactly as submitted, the job completes, and its stored job returns the messages."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import follow, stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

FIELDS: dict[str, Any] = {
    "stop": ["\n\nUser:"],
    "response_format": {"type": "text"},
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order by its number",
                "parameters": {
                    "type": "object",
                    "properties": {"order": {"type": "string"}},
                    "required": ["order"],
                    "additionalProperties": False,
                },
                "strict": True,
            },
        }
    ],
    "tool_choice": "none",
    "presence_penalty": 0.4,
    "frequency_penalty": -0.2,
    "logit_bias": {"50256": -100},
    "seed": 42,
    "user": "customer-9",
    "reasoning_effort": "medium",
    "max_completion_tokens": 120,
    "n": 1,
}


async def get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_messages_job_reaches_the_llm_intact_and_is_stored_with_its_messages(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    marker = f"order-{uuid.uuid4().hex}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are the support desk of a bike shop. Be brief."},
        {"role": "user", "content": f"Where is my order {marker}?"},
        {"role": "assistant", "content": "It left our warehouse yesterday."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "When will it arrive? [[sim tokens=40]]"},
                {"type": "image_url", "image_url": {"url": "https://example.com/receipt.png"}},
            ],
        },
    ]
    config = {"model": "gpt-4o-mini", "temperature": 0.1, **FIELDS}
    accepted = await submit(
        urls["gateway"], user_token, messages=messages, job_type="analysis", config=config
    )
    job_id = accepted["job_id"]

    chunks, final = await follow(urls["notifier_ws"], user_token, job_id)
    assert final["event"] == "job.completed", final
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))

    status, seen = await get_json(f"{urls['simulator']}/_sim/requests?contains={marker}")
    assert status == 200
    bodies = [r["body"] for r in seen["requests"]]
    assert len(bodies) == 1, bodies
    body = bodies[0]
    # The conversation as given: it has a system message, so no job type prompt comes first.
    assert body["messages"] == messages
    for name, value in FIELDS.items():
        assert body[name] == value, name
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.1
    assert body["stream"] is True
    # Unset fields are not sent; max_completion_tokens stands in for max_tokens.
    assert not {"max_tokens", "top_p", "parallel_tool_calls"} & set(body)

    result = await stored_result(urls["gateway"], user_token, job_id)
    assert result["status"] == "completed"
    assert result["response"] == "".join(c["text"] for c in chunks)
    assert result["messages"] == messages

    async def stored_job() -> dict[str, Any] | None:
        status, job = await get_json(f"{urls['gateway']}/api/v1/jobs/{job_id}", user_token)
        return job if status == 200 and job["status"] == "completed" else None

    job = await wait_for(stored_job, timeout=30, message=f"stored job {job_id}")
    assert job["messages"] == messages
    assert job["prompt"] is None
    # Progress counts against the bound that was sent.
    assert job["progress"]["max_tokens"] == FIELDS["max_completion_tokens"]
    assert job["progress"]["tokens"] == result["usage"]["completion_tokens"] == 40
    for name, value in FIELDS.items():
        assert job["config"][name] == value, name
    # A list of jobs leaves what was asked out: the single job's read has it.
    status, page = await get_json(f"{urls['gateway']}/api/v1/jobs", user_token)
    assert status == 200
    (listed,) = [j for j in page["items"] if j["job_id"] == job_id]
    assert listed["messages"] is None and listed["config"] is None
