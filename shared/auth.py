"""Signed bearer API tokens: a user id and scopes, HMAC-SHA256 under a shared secret.

Format: `sj1.<base64url(json payload)>.<base64url(signature)>`. Every service
verifies tokens itself with the shared secret; no call to an auth server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

PREFIX = "sj1"
SCOPE_WRITE = "jobs:write"
SCOPE_READ = "jobs:read"
SCOPE_ADMIN = "admin"
DEFAULT_SCOPES = (SCOPE_READ, SCOPE_WRITE)


class InvalidToken(Exception):
    """The token is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes

    def can(self, scope: str) -> bool:
        return scope in self.scopes or self.is_admin

    def may_see(self, owner_id: str) -> bool:
        return self.is_admin or owner_id == self.user_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), f"{PREFIX}.{body}".encode(), hashlib.sha256).digest())


def issue_token(
    secret: str,
    user_id: str,
    scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
    *,
    ttl_s: int | None = 30 * 24 * 3600,
    now: float | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    payload: dict[str, object] = {"sub": user_id, "scopes": sorted(scopes), "iat": issued}
    if ttl_s is not None:
        payload["exp"] = issued + ttl_s
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{PREFIX}.{body}.{_sign(secret, body)}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> Principal:
    try:
        prefix, body, signature = token.split(".")
    except ValueError:
        raise InvalidToken("malformed token") from None
    if prefix != PREFIX:
        raise InvalidToken("unknown token version")
    if not hmac.compare_digest(signature, _sign(secret, body)):
        raise InvalidToken("bad signature")
    try:
        payload = json.loads(_unb64(body))
        user_id = payload["sub"]
        scopes = frozenset(payload["scopes"])
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed payload") from None
    if not isinstance(user_id, str) or not user_id:
        raise InvalidToken("malformed payload")
    exp = payload.get("exp")
    if exp is not None and (now if now is not None else time.time()) >= exp:
        raise InvalidToken("token expired")
    return Principal(user_id=user_id, scopes=scopes)


def principal_from_header(secret: str, authorization: str | None) -> Principal:
    """Read an `Authorization: Bearer <token>` header value."""
    if not authorization:
        raise InvalidToken("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    return verify_token(secret, token.strip())
