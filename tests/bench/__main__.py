"""`make bench`: measure streamjobs against the simulator and write bench-results.json.

Starts its own Kafka, PostgreSQL, simulator and services under `.state/bench/`
(free ports, fresh topics), runs each scenario once, prints the figures beside
the DESIGN.md targets and merges them into `bench-results.json`. It reports;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from pathlib import Path

from deploy.localstack.kafka import KafkaNode
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import free_port
from deploy.localstack.stack import Ports, Stack
from shared.auth import issue_token
from shared.kafka import ensure_topics
from tests.bench import baseline, gateway, hotpath, notifier, pipeline, results
from tests.bench.figures import Figure, render, write

ROOT = Path(__file__).resolve().parents[2]


async def run(
    args: argparse.Namespace, stack: Stack, bootstrap: str, database_url: str
) -> list[Figure]:
    figures: list[Figure] = hotpath.measure()
    sim = f"{stack.urls()['simulator']}/v1"
    figures += await baseline.measure(sim, streams=args.streams, tokens=args.tokens)
    figures += await pipeline.measure(stack, bootstrap, streams=args.streams, tokens=args.tokens)
    figures += await results.measure(bootstrap, database_url, jobs=2000, chunks_per_job=25)
    figures += await notifier.measure(bootstrap, clients=args.clients, jobs=args.clients // 100)
    figures += await notifier.measure_split(bootstrap)
    # Last, with the streamer stopped: on 2 cores, streaming the thousands of jobs submitted
    # here would compete with the submission path itself; the jobs wait in Kafka instead.
    await asyncio.to_thread(stack.processes["streamer"].stop)
    token = issue_token(stack.auth_secret(), "bench-gateway")
    figures += await gateway.measure(
        stack.urls()["gateway"], token, requests=args.submissions, concurrency=16
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--clients", type=int, default=5000, help="WebSocket clients")
    parser.add_argument("--submissions", type=int, default=5000, help="REST submissions")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()

    state = ROOT / ".state" / "bench"
    shutil.rmtree(state, ignore_errors=True)
    kafka = KafkaNode(
        state / "kafka", ROOT / ".state" / "cache", free_port(), free_port(), heap="1g"
    )
    postgres = PostgresNode(state / "postgres", free_port())
    ports = Ports(
        **{n: free_port() for n in ("simulator", "gateway", "results", "notifier", "streamer")},
        notifier_sse=free_port(),
    )
    cold = time.perf_counter()
    kafka.start()
    postgres.start()
    stack = Stack(
        state_dir=state / "stack",
        cache_dir=ROOT / ".state" / "cache",
        ports=ports,
        kafka_bootstrap=kafka.bootstrap_servers,
        database_url=postgres.dsn,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        extra_env={
            "STREAMER_SLOTS": str(args.streams),
            "SIM_TOKENS_PER_SECOND": "100",
            "SIM_TTFT_MS": "50",
            "LOG_LEVEL": "WARNING",
            # The gateway figure measures submission itself, not the per-user limits.
            "GATEWAY_SUBMISSIONS_PER_MINUTE": "0",
            "GATEWAY_MAX_IN_FLIGHT": "0",
        },
    )
    try:
        asyncio.run(ensure_topics(kafka.bootstrap_servers, stack.topic_prefix, 4))
        stack.start_simulator()
        for name in ("results", "streamer", "notifier", "gateway"):
            stack.start_service(name)
        started = Figure(
            "cold start: Kafka, PostgreSQL, simulator and four services ready",
            time.perf_counter() - cold,
            "s",
            "<= 30",
            "from nothing running to every /readyz answering 200 (Kafka jars cached)",
        )
        figures = [started, *asyncio.run(run(args, stack, kafka.bootstrap_servers, postgres.dsn))]
    finally:
        stack.stop()
        kafka.stop()
        postgres.stop()
    print(render(figures))
    write(figures, args.out)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
