"""Submit a demo job through the REST API and print its tokens as they arrive over the WebSocket.

`python -m deploy.demo [--prompt TEXT] [--priority high]`; reads the URLs and
token from the environment (`.state/stack.env`, written by `make run` and `make fleet`).
It streams from the notifier instance the job's `links.websocket` names (`STREAMJOBS_WS_URL`
when there is none) and follows a `redirect` frame to another instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

MAX_REDIRECTS = 3  # instances agree on who serves a job, so one is all a client should see
DEFAULT_PROMPT = "Explain in a few sentences why streaming LLM output token by token helps users."


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def submit(
    http: aiohttp.ClientSession, base: str, args: argparse.Namespace
) -> tuple[str, str | None]:
    """The new job's id and its `links.websocket` (the notifier instance that serves it)."""
    body = {
        "prompt": args.prompt,
        "job_type": args.job_type,
        "priority": args.priority,
        "config": {"model": args.model, "max_tokens": args.max_tokens, "temperature": 0.7},
        "metadata": {"source": "make run"},
    }
    async with http.post(f"{base}/api/v1/jobs", json=body) as resp:
        payload = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"submit failed: HTTP {resp.status} {payload}")
    job_id: str = payload["job_id"]
    out(f"submitted job {job_id} ({args.job_type}, priority {args.priority})\n\n")
    return job_id, (payload.get("links") or {}).get("websocket")


@dataclass
class Progress:
    """Where the stream is: what a subscription at another instance resumes from."""

    attempt: int = 0
    last_seq: int = -1

    def subscribe_frame(self, job_id: str) -> str:
        frame: dict[str, Any] = {
            "type": "subscribe",
            "channel": f"job:{job_id}",
            "last_seq": self.last_seq,
        }
        if self.attempt:
            frame["attempt"] = self.attempt
        return json.dumps(frame)


async def stream(ws_url: str, token: str, job_id: str) -> dict[str, Any]:
    """Print the job's text as it streams; return the final event. A notifier instance that
    does not serve the job answers with a redirect: resume there from the last chunk."""
    progress = Progress()
    for _ in range(MAX_REDIRECTS + 1):
        ended = await stream_from(ws_url, token, job_id, progress)
        if isinstance(ended, dict):
            return ended
        out(f"[redirected to {ended}]\n")
        ws_url = ended
    raise RuntimeError(f"more than {MAX_REDIRECTS} redirects")


async def stream_from(
    ws_url: str, token: str, job_id: str, progress: Progress
) -> dict[str, Any] | str:
    """One connection: the final event, or the URL a redirect names."""
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(progress.subscribe_frame(job_id))
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "chunk":
                if msg["attempt"] != progress.attempt:
                    if progress.attempt:
                        out(f"\n[attempt {msg['attempt']} restarts the stream]\n")
                    progress.attempt = msg["attempt"]
                progress.last_seq = msg["seq"]
                out(msg["text"])
            elif kind == "event" and msg["event"] in (
                "job.completed",
                "job.failed",
                "job.cancelled",
            ):
                out("\n\n")
                return dict(msg)
            elif kind == "event" and msg["event"] == "job.retrying":
                out(f"\n[retrying: {msg['data'].get('reason')}]\n")
            elif kind == "redirect":
                return str(msg["url"])
            elif kind == "error":
                raise RuntimeError(f"notifier refused: {msg}")
    raise RuntimeError("the WebSocket closed before the job finished")


async def fetch_result(http: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    """The stored result; the results service may lag the live stream by a moment."""
    deadline = time.monotonic() + 30
    while True:
        async with http.get(f"{base}/api/v1/jobs/{job_id}/result") as resp:
            if resp.status == 200:
                result: dict[str, Any] = await resp.json()
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"no stored result: HTTP {resp.status} {await resp.text()}")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> int:
    base = os.environ.get("STREAMJOBS_URL", "http://127.0.0.1:8080")
    ws_url = os.environ.get("STREAMJOBS_WS_URL", "ws://127.0.0.1:8082/ws")
    token = os.environ.get("STREAMJOBS_TOKEN", "")
    if not token:
        out("STREAMJOBS_TOKEN is not set: run `make run` or `source .state/stack.env`\n")
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        job_id, link = await submit(http, base, args)
        final = await stream(link or ws_url, token, job_id)
        if final["event"] != "job.completed":
            out(f"job ended {final['event']}: {final.get('data')}\n")
            return 1
        result = await fetch_result(http, base, job_id)
    usage = result["usage"]
    cost = result["estimated_cost_usd"]  # null: the workload file does not price the model
    out(
        "stored result:\n"
        f"  status            {result['status']} (attempt {result['attempt']})\n"
        f"  model             {result['model']}\n"
        f"  tokens            {usage['prompt_tokens']} prompt"
        f" + {usage['completion_tokens']} completion = {usage['total_tokens']}\n"
        f"  estimated cost    {'unpriced' if cost is None else f'${float(cost):.6f}'}\n"
        f"  time to 1st token {result['time_to_first_token_ms'] or 0:.1f} ms\n"
        f"  processing time   {result['processing_time_ms'] or 0:.1f} ms"
        f" ({result['tokens_per_second'] or 0:.1f} tokens/s)\n"
        f"  matches stream    {result['response'] == final['data'].get('response')}\n"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--job-type", default="analysis")
    parser.add_argument("--priority", default="high")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--max-tokens", type=int, default=120)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
