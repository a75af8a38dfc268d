"""Mint or revoke API tokens.

    python -m shared.token_cli USER [--scopes "jobs:read jobs:write"] [--ttl-days N]
    python -m shared.token_cli revoke JTI [--expires-at EPOCH]
    python -m shared.token_cli revoke --token TOKEN

Minting prints the token on stdout and its id (jti) and expiry on stderr. Revoking
publishes the id on the revocations topic; every service refuses the token within seconds.
Settings come from the environment like the services' (STREAMJOBS_AUTH_SECRET,
KAFKA_BOOTSTRAP_SERVERS, TOPIC_PREFIX, STREAMJOBS_TOKEN_TTL_S, STREAMJOBS_ADMIN_TOKEN_TTL_S).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from pydantic import ValidationError

from shared.auth import DEFAULT_SCOPES, InvalidToken, decode_token, default_ttl_s, issue_token
from shared.kafka import client_options
from shared.revocation import revoke
from shared.settings import CommonSettings


def _settings() -> CommonSettings:
    try:
        return CommonSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"token_cli: {problems}") from None


def _scopes(text: str) -> list[str]:
    # Space-separated like the `scope` claim; commas are still read for older scripts.
    return [s for s in text.replace(",", " ").split() if s]


def mint(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.token_cli", description=__doc__)
    parser.add_argument("user_id")
    parser.add_argument("--scopes", default=" ".join(DEFAULT_SCOPES), help="space-separated")
    parser.add_argument(
        "--ttl-days", type=float, default=None, help="default: 30 days, or 1 day with admin"
    )
    args = parser.parse_args(argv)
    settings = _settings()
    scopes = _scopes(args.scopes)
    ttl_s = (
        int(args.ttl_days * 86400)
        if args.ttl_days is not None
        else default_ttl_s(
            scopes,
            user_ttl_s=settings.streamjobs_token_ttl_s,
            admin_ttl_s=settings.streamjobs_admin_token_ttl_s,
        )
    )
    secret = settings.streamjobs_auth_secret.get_secret_value()
    token = issue_token(secret, args.user_id, scopes, ttl_s=ttl_s)
    verified = decode_token(secret, token)
    expires = datetime.fromtimestamp(verified.expires_at, UTC).isoformat()
    sys.stdout.write(token + "\n")
    sys.stderr.write(f"jti={verified.principal.token_id} expires={expires}\n")
    return 0


def revoke_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.token_cli revoke", description="Revoke a token by its id (jti)."
    )
    parser.add_argument("jti", nargs="?")
    parser.add_argument("--token", help="the token itself: its jti and expiry are read from it")
    parser.add_argument(
        "--expires-at",
        type=int,
        default=None,
        help="the token's exp (epoch s); default: now + the longest default lifetime",
    )
    args = parser.parse_args(argv)
    settings = _settings()
    if args.token:
        try:
            verified = decode_token(settings.streamjobs_auth_secret.get_secret_value(), args.token)
        except InvalidToken as exc:
            sys.stderr.write(f"token_cli: not a valid token ({exc}); revoke it by its jti\n")
            return 2
        jti, expires_at = verified.principal.token_id, verified.expires_at
    elif args.jti:
        longest = max(settings.streamjobs_token_ttl_s, settings.streamjobs_admin_token_ttl_s)
        jti, expires_at = args.jti, args.expires_at or int(time.time()) + longest
    else:
        parser.error("give a JTI or --token")
    asyncio.run(
        revoke(
            settings.kafka_bootstrap_servers,
            settings.topic_prefix,
            jti,
            expires_at,
            security=client_options(settings),
        )
    )
    sys.stderr.write(
        f"revoked jti={jti} (kept until {datetime.fromtimestamp(expires_at, UTC).isoformat()})\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["revoke"]:
        return revoke_command(args[1:])
    if args[:1] == ["issue"]:
        return mint(args[1:])
    return mint(args)


if __name__ == "__main__":
    raise SystemExit(main())
