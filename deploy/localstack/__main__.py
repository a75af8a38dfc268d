"""`python -m deploy.localstack up|down|status|env`: the local stack behind `make run`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

from deploy.localstack.procs import StartupError
from deploy.localstack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def build_stack() -> Stack:
    state = Path(os.environ.get("STREAMJOBS_STATE_DIR", ROOT / ".state"))
    return Stack(
        state_dir=state / "stack",
        cache_dir=state / "cache",
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )


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
    stack = build_stack()
    if args.command == "up":
        started = time.monotonic()
        try:
            stack.start()
        except StartupError as exc:
            print(f"streamjobs: start-up failed: {exc}", file=sys.stderr)
            return 1
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
