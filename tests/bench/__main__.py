"""`make bench`: measure streamjobs against the simulator and write bench-results.json.

Starts its own Kafka, PostgreSQL, simulator and services under `.state/bench/`
(free ports, fresh topics), runs each scenario once, prints the figures beside
the DESIGN.md targets and merges them into `bench-results.json`. It reports;
it asserts nothing. `--only a,b` runs some scenarios; `--base old.json` prints
each figure beside the same-named one of an older run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.kafka import KafkaNode
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import free_port
from deploy.localstack.stack import Ports, Stack
from shared.auth import issue_token
from shared.kafka import ensure_topics
from tests.bench import (
    baseline,
    capacity,
    cost,
    gateway,
    hotpath,
    notifier,
    pipeline,
    priority,
    results,
    user,
)
from tests.bench.compare import compare
from tests.bench.figures import Figure, load, render, write

ROOT = Path(__file__).resolve().parents[2]
# Enough descriptors for the notifier's clients in this process and its own sockets.
NOFILE = 65_536
NOFILE_RESERVE = 300  # the paced streams' clients, Kafka and listening sockets
SIM_TPS = 100  # tokens per second of every simulated stream unless its prompt says otherwise
GATEWAY_STREAMER_SLOTS = 16
GATEWAY_USERS = 64  # 8 admission partitions by default: every one of them gets users
# Requests in flight in the closed loop: enough to keep the gateway's CPU busy. With 16 the
# loop measured the admission round trip (16 / latency), not what the process can take.
GATEWAY_CONCURRENCY = 64


@dataclass
class Bench:
    args: argparse.Namespace
    bootstrap: str
    database_url: str
    stack: Stack | None = None
    # Kafka's and PostgreSQL's pids, named: what CPU figures count beside the services.
    infrastructure: dict[int, str] = field(default_factory=dict)

    @property
    def running(self) -> Stack:
        if self.stack is None:
            raise RuntimeError("this scenario needs the services running")
        return self.stack

    def roots(self) -> dict[int, str]:
        """Every process of the running stack and the infrastructure, by pid: each one's
        CPU is counted with its children's under its name."""
        return {p.pid: name for name, p in self.running.processes.items()} | self.infrastructure


async def run_hotpath(b: Bench) -> list[Figure]:
    return hotpath.measure()


async def run_user(b: Bench) -> list[Figure]:
    stack = b.running
    urls = stack.urls()
    token = issue_token(stack.auth_secret(), "bench-user")
    return await user.measure(
        f"{urls['simulator']}/v1",
        urls["gateway"],
        urls["notifier_ws"],
        token,
        jobs=b.args.users,
    )


async def run_streamer(b: Bench) -> list[Figure]:
    stack = b.running
    sdk = await baseline.measure(
        f"{stack.urls()['simulator']}/v1", streams=b.args.streams, tokens=b.args.tokens
    )
    own = await pipeline.measure(
        stack, b.bootstrap, streams=b.args.streams, tokens=b.args.tokens, tokens_per_s=SIM_TPS
    )
    cpu = next(f for f in own if f.name == "streamer: CPU per streamed token")
    return [*sdk, *own, pipeline.sdk_ratio(cpu, sdk[0])]


async def run_capacity(b: Bench) -> list[Figure]:
    return await capacity.measure(b.running, b.bootstrap)


async def run_priority(b: Bench) -> list[Figure]:
    return await priority.measure(b.running, b.bootstrap, slots=b.args.streams)


async def run_results(b: Bench) -> list[Figure]:
    return await results.measure(b.bootstrap, b.database_url, jobs=4000, chunks_per_job=25)


async def run_notifier(b: Bench) -> list[Figure]:
    # The notifier holds every client and the bench process their other ends: both must fit
    # under the descriptor limit, with room for their Kafka and listening sockets.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    clients = min(b.args.clients, nofile - NOFILE_RESERVE)
    limit = (
        f"; capped at {clients} by RLIMIT_NOFILE {nofile} (raising it needs CAP_SYS_RESOURCE)"
        if clients < b.args.clients
        else f"; RLIMIT_NOFILE {nofile}"
    )
    return await notifier.measure(
        b.bootstrap, clients=clients, jobs=max(1, clients // 100), limit_note=limit
    )


async def run_split(b: Bench) -> list[Figure]:
    return await notifier.measure_split(b.bootstrap)


async def run_cost(b: Bench) -> list[Figure]:
    stack = b.running
    tokens = [issue_token(stack.auth_secret(), f"bench-cost-{i}") for i in range(GATEWAY_USERS)]
    return await cost.measure(
        stack.urls()["gateway"], tokens, b.bootstrap, stack.topic_prefix, b.roots()
    )


async def run_gateway(b: Bench) -> list[Figure]:
    # The whole stack runs. Streaming 1,000 jobs/s takes many cores; on 2 cores it would
    # measure the CPU left to the gateway, so the streamer runs with few slots: it streams
    # the first jobs slowly and the rest wait in Kafka, as under a real backlog.
    stack = b.running
    await asyncio.to_thread(stack.processes["streamer"].stop, 5.0)
    await asyncio.to_thread(
        stack.start_service, "streamer", STREAMER_SLOTS=str(GATEWAY_STREAMER_SLOTS)
    )
    tokens = [issue_token(stack.auth_secret(), f"bench-gateway-{i}") for i in range(GATEWAY_USERS)]
    note = (
        "whole stack running: results persists and the notifier follows every job; the"
        f" streamer, restarted with {GATEWAY_STREAMER_SLOTS} slots, streams the first jobs"
        " (20 tokens at 10/s) and leaves the rest queued in Kafka"
    )
    return await gateway.measure(
        stack.urls()["gateway"],
        tokens,
        requests=b.args.submissions,
        concurrency=GATEWAY_CONCURRENCY,
        stack_note=note,
        pid=stack.processes["gateway"].pid,
        roots=b.roots(),
    )


Scenario = Callable[[Bench], Awaitable[list[Figure]]]
# In the order of a full run. 500 streams at once overload a streamer on 2 cores (it may
# lose its group and rerun jobs for a while), so that comes after the gentler streamer
# scenarios; the gateway comes last, since it restarts the streamer.
SCENARIOS: dict[str, Scenario] = {
    "hotpath": run_hotpath,
    "user": run_user,
    "capacity": run_capacity,
    "priority": run_priority,
    "streamer": run_streamer,
    "results": run_results,
    "notifier": run_notifier,
    "split": run_split,
    "cost": run_cost,
    "gateway": run_gateway,
}
NEEDS_SERVICES = frozenset({"user", "streamer", "capacity", "priority", "cost", "gateway"})


def chosen(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]


def raise_nofile(wanted: int = NOFILE) -> int:
    """Raise this process's descriptor limit (the notifier child inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, PermissionError):  # raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(bench: Bench, names: list[str]) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    failed: list[str] = []
    for name in names:
        began = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            found = await SCENARIOS[name](bench)
        # The boundary of a scenario: one failing must not lose the figures of the others.
        except Exception:
            failed.append(name)
            print(f"[{name}] FAILED after {time.perf_counter() - began:.0f} s", flush=True)
            traceback.print_exc()
            continue
        figures += found
        print(render(found))
        print(f"[{name}] {time.perf_counter() - began:.1f} s", flush=True)
    return figures, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help=f"comma-separated scenarios of: {', '.join(SCENARIOS)}")
    parser.add_argument("--base", type=Path, help="an older bench-results.json to compare with")
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--users", type=int, default=50, help="jobs followed end to end")
    parser.add_argument("--clients", type=int, default=20_000, help="WebSocket clients")
    parser.add_argument("--submissions", type=int, default=5000, help="REST submissions")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    names = chosen(args.only)
    base = load(args.base) if args.base else None
    total = time.perf_counter()
    raise_nofile()

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
    bench = Bench(args, kafka.bootstrap_servers, postgres.dsn)
    if kafka.process is not None:
        bench.infrastructure[kafka.process.pid] = "kafka"
    if (postmaster := postgres.postmaster_pid()) is not None:
        bench.infrastructure[postmaster] = "postgres"
    figures: list[Figure] = []
    failed: list[str] = []
    stack = Stack(
        state_dir=state / "stack",
        cache_dir=ROOT / ".state" / "cache",
        ports=ports,
        kafka_bootstrap=kafka.bootstrap_servers,
        database_url=postgres.dsn,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        extra_env={
            "STREAMER_SLOTS": str(args.streams),
            # Stops and restarts between scenarios need not wait for running jobs.
            "STREAMER_GRACE_S": "2",
            "SIM_TOKENS_PER_SECOND": str(SIM_TPS),
            "SIM_TTFT_MS": "50",
            "LOG_LEVEL": "WARNING",
            # The gateway figure measures submission itself, not the per-user limits.
            "GATEWAY_SUBMISSIONS_PER_MINUTE": "0",
            "GATEWAY_MAX_IN_FLIGHT": "0",
        },
    )
    try:
        if NEEDS_SERVICES.intersection(names):
            asyncio.run(ensure_topics(kafka.bootstrap_servers, stack.topic_prefix, 4))
            stack.start_simulator()
            for name in ("results", "streamer", "notifier", "gateway"):
                stack.start_service(name)
            bench.stack = stack
            figures.append(
                Figure(
                    "cold start: Kafka, PostgreSQL, simulator and four services ready",
                    time.perf_counter() - cold,
                    "s",
                    "<= 30",
                    "from nothing running to every /readyz answering 200 (Kafka jars cached)",
                )
            )
        found, failed = asyncio.run(run(bench, names))
        figures += found
    finally:
        stack.stop()
        kafka.stop()
        postgres.stop()
    elapsed = time.perf_counter() - total
    figures.append(
        Figure(
            "bench: total duration",
            elapsed,
            "s",
            "<= 600" if len(names) == len(SCENARIOS) else "report",
            f"scenarios: {', '.join(names)}; stack start and stop included",
        )
    )
    print()
    print(render(figures) if base is None else compare(base, figures))
    write(figures, args.out)
    print(f"\nwritten to {args.out}")
    if failed:
        print(f"scenarios that failed: {', '.join(failed)}")
    print(f"total duration {elapsed:.0f} s ({elapsed / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
