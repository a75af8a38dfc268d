"""The baseline: the same streams read straight from the LLM simulator with the openai SDK."""

from __future__ import annotations

import asyncio
import os
import time

import openai

from tests.bench.figures import Figure


async def sdk_streams(base_url: str, streams: int, tokens: int) -> tuple[int, float, float]:
    """Run `streams` concurrent streams; return (tokens received, wall s, CPU s of this process)."""
    received = 0
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0) as client:

        async def one(i: int) -> None:
            nonlocal received
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"baseline {i} [[sim tokens={tokens}]]"}],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=tokens,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received += 1

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(streams)))
        return received, time.perf_counter() - wall0, time.process_time() - cpu0


async def measure(base_url: str, streams: int = 200, tokens: int = 100) -> list[Figure]:
    received, wall, cpu = await sdk_streams(base_url, streams, tokens)
    return [
        Figure(
            "baseline: SDK CPU per token (direct from simulator)",
            cpu / max(received, 1) * 1e6,
            "us",
            "-",
            f"{streams} concurrent streams x {tokens} tokens in {wall:.2f}s, pid {os.getpid()}",
        )
    ]
