"""`python -m deploy.localstack up|fleet|down|status|env`: the local stack behind `make run`
(`up`) and the local fleet behind `make fleet` (`fleet`); `down` and `status` cover both.

Environment: `STREAMJOBS_STATE_DIR` (default `.state`); `STREAMJOBS_KAFKA_SECURITY`
(`plaintext` or `sasl`; default: what the stack's Kafka data was made with, else
plaintext); `STREAMJOBS_STACK_PORTS` (`gateway=18080,kafka=29092,...`: other ports than the
defaults); `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `OPENAI_BASE_URL` (use an existing
server instead of starting one; a value equal to the stack's own, as `.state/stack.env`
exports it, still means the stack's own).
The fleet: `STREAMJOBS_FLEET_BROKERS` (default 3), `STREAMJOBS_FLEET_INSTANCES` (default 2,
of each service), `STREAMJOBS_FLEET_PORT_OFFSET` (default 0, added to every fleet port);
its state lives in `<state>/fleet`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from deploy.localstack.envfile import write_env, write_fleet_env
from deploy.localstack.fleet import Fleet, FleetPorts
from deploy.localstack.procs import StartupError, pid_alive
from deploy.localstack.stack import KafkaSecurity, Ports, Stack

ROOT = Path(__file__).resolve().parents[2]


class UsageError(ValueError):
    """A setting of the stack itself is wrong; the message says which."""


def parse_ports(text: str) -> Ports:
    ports = Ports()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if not hasattr(ports, name) or not value.isdigit():
            raise UsageError(f"STREAMJOBS_STACK_PORTS: {item!r} is not NAME=PORT")
        setattr(ports, name, int(value))
    return ports


def kafka_security(state_dir: Path) -> KafkaSecurity:
    chosen = os.environ.get("STREAMJOBS_KAFKA_SECURITY", "").strip().lower()
    if not chosen:  # keep what the existing data was made with
        marker = state_dir / "kafka" / "security"
        chosen = marker.read_text().strip() if marker.exists() else "plaintext"
    if chosen not in ("plaintext", "sasl"):
        raise UsageError(f"STREAMJOBS_KAFKA_SECURITY={chosen!r}: use plaintext or sasl")
    return "sasl" if chosen == "sasl" else "plaintext"


def build_stack() -> Stack:
    state = state_root()
    stack = Stack(
        state_dir=state / "stack",
        cache_dir=state / "cache",
        ports=parse_ports(os.environ.get("STREAMJOBS_STACK_PORTS", "")),
        kafka_security=kafka_security(state / "stack"),
    )
    # Ownership comes from the stack, not the environment: a shell that sourced
    # `.state/stack.env` exports the stack's own URLs, and those still mean "ours".
    own = stack.own_urls()
    # Nor is the fleet's Kafka or database someone else's: a shell that sourced the fleet's
    # stack.env must not lead `make run` onto the fleet's brokers.
    fleet_dir = state / "fleet"
    fleet = (Fleet.load(fleet_dir, state / "cache") or Fleet(fleet_dir, state / "cache")).own_urls()

    def external(name: str) -> str | None:
        value = os.environ.get(name) or None
        return None if value in (own[name], fleet[name]) else value

    stack.kafka_bootstrap = external("KAFKA_BOOTSTRAP_SERVERS")
    stack.database_url = external("DATABASE_URL")
    stack.openai_base_url = external("OPENAI_BASE_URL")
    return stack


def env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, "").strip() or str(default)
    if not text.isdigit() or int(text) < minimum:
        raise UsageError(f"{name}={text!r}: a whole number, at least {minimum}")
    return int(text)


def state_root() -> Path:
    return Path(os.environ.get("STREAMJOBS_STATE_DIR", ROOT / ".state"))


def build_fleet() -> Fleet:
    """The fleet as its fleet.json left it, else as the environment asks for a new one."""
    state = state_root()
    known = Fleet.load(state / "fleet", state / "cache")
    if known is not None:
        return known
    return Fleet(
        state_dir=state / "fleet",
        cache_dir=state / "cache",
        brokers=env_int("STREAMJOBS_FLEET_BROKERS", 3, 1),
        instances=env_int("STREAMJOBS_FLEET_INSTANCES", 2, 1),
        ports=FleetPorts(offset=env_int("STREAMJOBS_FLEET_PORT_OFFSET", 0, 0)),
    )


def fleet_running(fleet: Fleet) -> bool:
    return any(e["pid"] and pid_alive(e["pid"]) for e in fleet.entries())


def fleet_status(fleet: Fleet) -> int:
    """One line per process of the fleet: ready (its /readyz answers 200) or down."""
    worst = 0
    for entry in fleet.entries():
        name = f"{entry['role']}-{entry['instance']}"
        alive = bool(entry["pid"]) and pid_alive(entry["pid"])
        where = entry.get("ready") or next(iter(entry["urls"].values()))
        if not alive:
            state, worst = "down", 1
        elif "ready" in entry:
            try:
                with urllib.request.urlopen(entry["ready"], timeout=2) as resp:
                    state = "ready" if resp.status == 200 else f"HTTP {resp.status}"
            except OSError as exc:
                state, worst = f"down ({exc})", 1
        else:
            state = "running"
        print(f"  {name:<12} {state:<8} pid {entry['pid'] or '-':<8} {where}")
    return worst


def status(stack: Stack) -> int:
    checks = {
        "gateway": f"{stack.urls()['gateway']}/readyz",
        "results": f"{stack.urls()['results']}/readyz",
        "streamer": f"{stack.urls()['streamer']}/readyz",
        "notifier": f"{stack.urls()['notifier']}/readyz",
        "simulator": f"{stack.urls()['simulator']}/healthz",
    }
    worst = 0
    for name, url in checks.items():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                state = "ready" if resp.status == 200 else f"HTTP {resp.status}"
        except OSError as exc:
            state, worst = f"down ({exc})", 1
        print(f"  {name:<10} {state:<8} {url}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "fleet", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        stack = build_stack()
        fleet = build_fleet()
    except UsageError as exc:
        print(f"streamjobs: {exc}", file=sys.stderr)
        return 2
    if args.command == "fleet":
        return fleet_up(fleet)
    if args.command == "up":
        started = time.monotonic()
        failed = start_up(stack.start, "start-up failed")
        if failed is not None:
            return failed
        env = write_env(stack)
        print(f"streamjobs: stack ready in {time.monotonic() - started:.1f}s (settings in {env})")
        return status(stack)
    if args.command == "down":
        stack.stop()
        print("streamjobs: stack stopped")
        if fleet.manifest_path.exists():
            fleet.stop()
            print("streamjobs: fleet stopped")
        return 0
    if args.command == "env":
        print(write_fleet_env(fleet) if fleet_running(fleet) else write_env(stack))
        return 0
    if fleet.manifest_path.exists() and fleet_running(fleet):
        print(f"fleet ({fleet.brokers} Kafka nodes, {fleet.instances} of each service):")
        worst = fleet_status(fleet)
        if not stack_started(stack):
            return worst
        print("stack (make run):")
        return max(worst, status(stack))
    return status(stack)


def stack_started(stack: Stack) -> bool:
    """Whether `make run`'s stack has a process running (its pid files say so)."""
    return any(
        pid_alive(int(path.read_text().strip() or 0))
        for path in stack.run_dir.glob("*.pid")
        if path.read_text().strip().isdigit()
    )


def start_up(start: Callable[[], None], failure: str) -> int | None:
    """Run `start` (which stops what it started when it fails); the exit status of a failure,
    told in one line, or None."""
    try:
        start()
    except StartupError as exc:
        print(f"streamjobs: {failure}: {exc.summary}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamjobs: start-up interrupted; stopped what had started", file=sys.stderr)
        return 130
    return None


def fleet_up(fleet: Fleet) -> int:
    started = time.monotonic()
    print(
        f"streamjobs: starting the fleet: {fleet.brokers} Kafka nodes "
        f"(replication {fleet.replication_factor}, min.insync.replicas "
        f"{fleet.min_insync_replicas}), PostgreSQL, the simulator, {fleet.instances} of each "
        "service",
        flush=True,
    )
    failed = start_up(fleet.start, "fleet start-up failed")
    if failed is not None:
        return failed
    env = write_fleet_env(fleet)
    print(
        f"streamjobs: fleet ready in {time.monotonic() - started:.1f}s "
        f"(settings in {env}, every process in {fleet.manifest_path})"
    )
    return fleet_status(fleet)


if __name__ == "__main__":
    raise SystemExit(main())
