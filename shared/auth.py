"""Bearer API tokens: standard JWTs (HS256) carrying a user id, scopes and a revocable id.

Claims: `sub` (user id), `scope` (space-separated, RFC 8693), `iat`, `exp`, `jti`
(random token id, the handle for revocation), `iss` = ISSUER, `aud` = AUDIENCE.
Every service verifies tokens itself with the shared secret; no call to an auth
server. Any other system holding the secret can mint or verify them with a JWT library.
"""

from __future__ import annotations

import binascii
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

SCOPE_WRITE = "jobs:write"
SCOPE_READ = "jobs:read"
SCOPE_ADMIN = "admin"
DEFAULT_SCOPES = (SCOPE_READ, SCOPE_WRITE)

ALGORITHM = "HS256"
ISSUER = "streamjobs"
AUDIENCE = "streamjobs-api"
USER_TOKEN_TTL_S = 30 * 24 * 3600
# An admin token sees every user's jobs: a leaked one should not outlive a working day.
ADMIN_TOKEN_TTL_S = 24 * 3600
DEFAULT_LEEWAY_S = 5.0
# Ours are ~300 bytes; the bound keeps a hostile header from costing a large decode.
MAX_TOKEN_BYTES = 4096
MIN_SECRET_BYTES = 32
REQUIRED_CLAIMS = ("sub", "scope", "iat", "exp", "jti", "iss", "aud")


class InvalidToken(Exception):
    """The token is malformed, forged, expired, revoked or not yet valid."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    scopes: frozenset[str]
    token_id: str = ""

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes

    def can(self, scope: str) -> bool:
        return scope in self.scopes or self.is_admin

    def may_see(self, owner_id: str) -> bool:
        return self.is_admin or owner_id == self.user_id


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid token says: who, and until when (epoch seconds)."""

    principal: Principal
    expires_at: int


def default_ttl_s(
    scopes: tuple[str, ...] | list[str] | frozenset[str],
    *,
    user_ttl_s: int = USER_TOKEN_TTL_S,
    admin_ttl_s: int = ADMIN_TOKEN_TTL_S,
) -> int:
    return admin_ttl_s if SCOPE_ADMIN in scopes else user_ttl_s


def issue_token(
    secret: str,
    user_id: str,
    scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
    *,
    ttl_s: int | None = None,
    now: float | None = None,
    token_id: str | None = None,
) -> str:
    """A signed token; without `ttl_s` it lives 30 days, or 24 h when it carries `admin`."""
    issued = int(now if now is not None else time.time())
    lifetime = ttl_s if ttl_s is not None else default_ttl_s(scopes)
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "scope": " ".join(sorted(set(scopes))),
        "iat": issued,
        "exp": issued + lifetime,
        "jti": token_id or secrets.token_urlsafe(16),
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def _claim_int(payload: dict[str, Any], name: str) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name!r} must be a number")
    return int(value)


def _claim_str(payload: dict[str, Any], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name!r} must be a non-empty string")
    return value


def decode_token(
    secret: str, token: str, *, now: float | None = None, leeway_s: float = DEFAULT_LEEWAY_S
) -> VerifiedToken:
    """Verify signature, algorithm, issuer, audience and times; every refusal is InvalidToken."""
    if not isinstance(token, str) or not token:
        raise InvalidToken("missing token")
    # Cheap shape checks first: PyJWT is never handed text that is not a plausible JWS.
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token too long")
    if not token.isascii() or token.count(".") != 2:
        raise InvalidToken("malformed token")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            # Times are checked below against one clock that tests can set.
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise InvalidToken("bad signature") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken("unsupported algorithm") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"missing claim {exc.claim!r}") from None
    except (jwt.PyJWTError, binascii.Error, ValueError, TypeError, KeyError):
        # PyJWT raises its own errors for nearly everything; the rest is belt and braces.
        raise InvalidToken("malformed token") from None
    if not isinstance(payload, dict):
        raise InvalidToken("malformed payload")
    user_id = _claim_str(payload, "sub")
    token_id = _claim_str(payload, "jti")
    scope = payload["scope"]
    if not isinstance(scope, str):
        raise InvalidToken("claim 'scope' must be a space-separated string")
    issued, expires = _claim_int(payload, "iat"), _claim_int(payload, "exp")
    moment = now if now is not None else time.time()
    if moment >= expires:
        raise InvalidToken("token expired")
    if issued > moment + leeway_s:
        raise InvalidToken("token issued in the future")
    if "nbf" in payload and _claim_int(payload, "nbf") > moment + leeway_s:
        raise InvalidToken("token not yet valid")
    principal = Principal(user_id=user_id, scopes=frozenset(scope.split()), token_id=token_id)
    return VerifiedToken(principal=principal, expires_at=expires)


def verify_token(
    secret: str, token: str, *, now: float | None = None, leeway_s: float = DEFAULT_LEEWAY_S
) -> Principal:
    """The principal of a valid token, without cache or revocation: see `TokenVerifier`."""
    return decode_token(secret, token, now=now, leeway_s=leeway_s).principal


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value."""
    if not authorization:
        raise InvalidToken("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    return token.strip()


def principal_from_header(secret: str, authorization: str | None) -> Principal:
    """Read an `Authorization: Bearer <token>` header value (no cache, no revocation)."""
    return verify_token(secret, bearer_token(authorization))
