"""`python -m deploy.chaos [--rounds 20]` (`make chaos ROUNDS=...`): chaos against the fleet
`make fleet` started. Prints its figures in a table, writes them as JSON, and exits 1 when
any job was lost or finished twice, or a client saw a gap or a duplicate."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from deploy.chaos.figures import Figures
from deploy.chaos.run import ChaosOptions, run_chaos
from deploy.localstack.fleet import Fleet
from deploy.localstack.procs import pid_alive

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosOptions()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="jobs a second")
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="per job")
    parser.add_argument("--tps", type=float, default=defaults.tokens_per_s, help="tokens a second")
    parser.add_argument("--pause", type=float, default=defaults.pause_s, help="s, kill to restart")
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--json", type=Path, help="default: <state>/fleet/chaos-results.json")
    args = parser.parse_args(argv)
    state = Path(os.environ.get("STREAMJOBS_STATE_DIR", ROOT / ".state"))
    fleet = Fleet.load(state / "fleet", state / "cache")
    if fleet is None or not all(
        entry["pid"] and pid_alive(entry["pid"]) for entry in fleet.entries()
    ):
        print("streamjobs: no whole fleet is running: start one with `make fleet`", file=sys.stderr)
        return 2
    options = ChaosOptions(
        rounds=args.rounds,
        rate=args.rate,
        tokens=args.tokens,
        tokens_per_s=args.tps,
        pause_s=args.pause,
        drain_timeout_s=args.drain_timeout,
    )
    print(
        f"streamjobs: chaos on the fleet ({fleet.brokers} Kafka nodes, {fleet.instances} of each "
        f"service): {options.rounds} rounds, {options.rate:g} jobs/s",
        flush=True,
    )
    figures: Figures = asyncio.run(run_chaos(fleet, options, say=lambda s: print(s, flush=True)))
    out = args.json or fleet.state_dir / "chaos-results.json"
    figures.write(out)
    print(figures.table())
    for what, jobs in (("finished twice", figures.twice), ("lost", figures.lost_jobs)):
        for job_id, lines in jobs.items():
            print(f"{what}: job {job_id}", *lines, sep="\n  ")
    print(f"figures in {out}")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
