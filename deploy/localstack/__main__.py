"""`python -m deploy.localstack up|down|status|env`: the local stack behind `make run`.

Environment: `STREAMJOBS_STATE_DIR` (default `.state`); `STREAMJOBS_KAFKA_SECURITY`
(`plaintext` or `sasl`; default: what the stack's Kafka data was made with, else
plaintext); `STREAMJOBS_STACK_PORTS` (`gateway=18080,kafka=29092,...`: other ports than the
defaults); `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `OPENAI_BASE_URL` (use an existing
server instead of starting one; a value equal to the stack's own, as `.state/stack.env`
exports it, still means the stack's own).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

from deploy.localstack.procs import StartupError
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
    state = Path(os.environ.get("STREAMJOBS_STATE_DIR", ROOT / ".state"))
    stack = Stack(
        state_dir=state / "stack",
        cache_dir=state / "cache",
        ports=parse_ports(os.environ.get("STREAMJOBS_STACK_PORTS", "")),
        kafka_security=kafka_security(state / "stack"),
    )
    # Ownership comes from the stack, not the environment: a shell that sourced
    # `.state/stack.env` exports the stack's own URLs, and those still mean "ours".
    own = stack.own_urls()

    def external(name: str) -> str | None:
        value = os.environ.get(name) or None
        return None if value == own[name] else value

    stack.kafka_bootstrap = external("KAFKA_BOOTSTRAP_SERVERS")
    stack.database_url = external("DATABASE_URL")
    stack.openai_base_url = external("OPENAI_BASE_URL")
    return stack


def write_env(stack: Stack) -> Path:
    """`.state/stack.env`: what a shell needs to talk to the running stack."""
    from shared.auth import SCOPE_ADMIN, issue_token

    secret = stack.auth_secret()
    urls = stack.urls()
    lines = {
        "STREAMJOBS_URL": urls["gateway"],
        "STREAMJOBS_WS_URL": urls["notifier_ws"],
        "STREAMJOBS_TOKEN": issue_token(secret, "demo"),
        "STREAMJOBS_ADMIN_TOKEN": issue_token(
            secret, "ops", ["jobs:read", "jobs:write", SCOPE_ADMIN]
        ),
        **{k: v for k, v in stack.service_env().items() if k != "PYTHONUNBUFFERED"},
        # A shell (and `make doctor`) may look at the topics, nothing more.
        **stack.kafka_credentials("doctor"),
    }
    path = stack.state_dir.parent / "stack.env"
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in lines.items()))
    path.chmod(0o600)
    return path


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
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        stack = build_stack()
    except UsageError as exc:
        print(f"streamjobs: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        started = time.monotonic()
        try:
            stack.start()  # stops what it started when it fails
        except StartupError as exc:
            print(f"streamjobs: start-up failed: {exc.summary}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("streamjobs: start-up interrupted; stopped what had started", file=sys.stderr)
            return 130
        env = write_env(stack)
        print(f"streamjobs: stack ready in {time.monotonic() - started:.1f}s (settings in {env})")
        return status(stack)
    if args.command == "down":
        stack.stop()
        print("streamjobs: stack stopped")
        return 0
    if args.command == "env":
        print(write_env(stack))
        return 0
    return status(stack)


if __name__ == "__main__":
    raise SystemExit(main())
