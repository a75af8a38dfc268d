"""Create an API token: `python -m shared.token_cli USER [--scopes jobs:read,jobs:write]`."""

from __future__ import annotations

import argparse
import os
import sys

from shared.auth import DEFAULT_SCOPES, issue_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("user_id")
    parser.add_argument("--scopes", default=",".join(DEFAULT_SCOPES), help="comma-separated")
    parser.add_argument("--ttl-days", type=float, default=30.0)
    args = parser.parse_args(argv)
    secret = os.environ.get("STREAMJOBS_AUTH_SECRET")
    if not secret:
        sys.stderr.write("STREAMJOBS_AUTH_SECRET is not set\n")
        return 2
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    token = issue_token(secret, args.user_id, scopes, ttl_s=int(args.ttl_days * 86400))
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
