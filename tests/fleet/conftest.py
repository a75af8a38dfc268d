"""The `fleet` session fixture: the local fleet as `make fleet` starts it (3 Kafka nodes with
replication 3 and min.insync.replicas 2, one PostgreSQL, the simulator, 2 of each service),
on ports of its own under the suite's state dir, stopped at the end of the session.

What a test gets (`RunningFleet`):
- `url(role, i)`: base URL of instance i of `gateway`, `results`, `streamer` or `notifier`;
  `ws_url(i)` / `sse_url(i)`: notifier i's WebSocket URL and SSE base URL; `gateways`.
- `bootstrap`: every broker, comma-separated; `database_url`; `topic_prefix`.
- `token(user, admin=False)`: an API token the fleet accepts.
- `kill(role, i)`: kill -9 one process (`kafka` i is broker i, node id i + 1);
  `restart(role, i)`: start it again and wait until it is ready.
- `committed_records(bootstrap, topics)`: every committed record of `topics`, read to their
  ends with a read_committed consumer.
- `manifest_path`: fleet.json (every process: role, instance, pid, ports, URLs, log);
  `fleet`: the `deploy.localstack.fleet.Fleet` itself.
A test that kills something restarts it before it ends, so the next test finds a whole fleet.
Fleet tests time only their own call (`timeout(..., func_only=True)`): the fleet's start is
bounded by its own readiness waits and must not eat the first test's budget.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from deploy.chaos.run import committed
from deploy.localstack.envfile import write_fleet_env
from deploy.localstack.fleet import Fleet, FleetPorts
from deploy.localstack.procs import port_free
from shared.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, issue_token
from tests.conftest import STATE

# Tests kill instances: consumer groups notice within seconds rather than the default 10 s.
FAST_GROUPS = {
    "STREAMER_SESSION_TIMEOUT_MS": "6000",
    "STREAMER_HEARTBEAT_INTERVAL_MS": "1000",
    "RESULTS_SESSION_TIMEOUT_MS": "6000",
    "RESULTS_HEARTBEAT_INTERVAL_MS": "1000",
    "SIM_TTFT_MS": "20",
}
# A small in-flight limit, so that exact admission is tested with few long jobs; the rate
# limit far above what any test submits, so that only the in-flight limit refuses.
FLEET_LIMITS = {"GATEWAY_MAX_IN_FLIGHT": "5", "GATEWAY_SUBMISSIONS_PER_MINUTE": "100000"}
# Tests that kill and restart processes of the fleet: they run after the others, which then
# find a fleet that is not still catching up with restarts, and none pays the fleet's start
# out of its own timeout.
KILLS = "kills"
# Linux's default first ephemeral port (net.ipv4.ip_local_port_range).
EPHEMERAL_START = 32768
# The last tests of the session: they stop the fleet.
STOPS_THE_FLEET = "stops_the_fleet"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{KILLS}: kills processes of the session's fleet, so it runs late"
    )
    config.addinivalue_line(
        "markers", f"{STOPS_THE_FLEET}: stops the session's fleet, so it runs after every other"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker(STOPS_THE_FLEET) is not None:
            return 2
        return 1 if item.get_closest_marker(KILLS) is not None else 0

    items.sort(key=order)


@dataclass
class RunningFleet:
    fleet: Fleet
    stack_env: Path  # the stack.env `make fleet` writes, for this fleet

    @property
    def bootstrap(self) -> str:
        return self.fleet.bootstrap_servers

    @property
    def database_url(self) -> str:
        return self.fleet.database_url

    @property
    def topic_prefix(self) -> str:
        return self.fleet.topic_prefix

    @property
    def manifest_path(self) -> Path:
        return self.fleet.manifest_path

    @property
    def gateways(self) -> list[str]:
        return [self.url("gateway", i) for i in range(self.fleet.instances)]

    def url(self, role: str, i: int) -> str:
        return self.fleet.url(role, i)

    def ws_url(self, i: int) -> str:
        return self.fleet.ws_url(i)

    def sse_url(self, i: int) -> str:
        return self.fleet.sse_url(i)

    def token(self, user: str, *, admin: bool = False) -> str:
        scopes = [SCOPE_READ, SCOPE_WRITE, *([SCOPE_ADMIN] if admin else [])]
        return issue_token(self.fleet.auth_secret(), user, scopes)

    def kill(self, role: str, i: int) -> None:
        self.fleet.kill(role, i)

    def restart(self, role: str, i: int) -> None:
        self.fleet.start_process(role, i)
        self.fleet.refresh_manifest()


async def committed_records(
    bootstrap: str, topics: list[str]
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of `topics`, from the beginning to the ends the read starts
    with (read_committed: aborted transactions are not there)."""
    return [record async for record, _ in committed(bootstrap, topics)]


def free_offset(state_dir: Path) -> FleetPorts:
    """An offset at which every port of the fleet is free (the defaults may be in use by a
    fleet someone runs by hand) and below the kernel's ephemeral range: a port in it may be
    taken by any outgoing connection between this probe and the process's bind (a restart
    binds again much later)."""
    for _ in range(50):
        ports = FleetPorts(offset=random.randrange(-23000, 3000))
        probe = Fleet(state_dir, STATE / "cache", ports=ports)
        every = probe.all_ports()
        if max(every) < EPHEMERAL_START and all(port_free(port) for port in every):
            return ports
    raise RuntimeError("no free set of ports for the fleet")


@pytest.fixture(scope="session")
def fleet(test_state_dir: Path) -> Iterator[RunningFleet]:
    state = test_state_dir / "fleet"  # short: PostgreSQL's socket lives under it
    running = Fleet(
        state_dir=state,
        cache_dir=STATE / "cache",
        brokers=3,
        instances=2,
        ports=free_offset(state),
        extra_env=FAST_GROUPS | FLEET_LIMITS,
    )
    try:
        running.start()
        yield RunningFleet(running, write_fleet_env(running))
    finally:
        running.stop()
