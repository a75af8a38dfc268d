"""Who a connection is and whether it may read jobs: the token check both transports share.

The verifier raises only `InvalidToken` (401 / close 4001) and a
token without `jobs:read` as `MissingScope` (403 / close 4403): a client's
token never crashes a connection handler.
"""

from __future__ import annotations

from shared.auth import SCOPE_READ, InvalidToken, Principal
from shared.verifier import TokenVerifier

MAX_TOKEN_CHARS = 4096  # far above a real token; refused before any decoding work


class MissingScope(Exception):
    """A valid token that lacks the scope reading jobs needs."""

    retriable = False

    def __init__(self, scope: str) -> None:
        super().__init__(f"the token lacks the {scope!r} scope")
        self.scope = scope


class TokenCheck:
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier  # cached, and refuses revoked tokens

    def reader(self, token: str) -> Principal:
        """The principal of a token that may read jobs; raises `InvalidToken` or `MissingScope`."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise InvalidToken("malformed token")
        principal = self._verifier.verify(token)  # raises only InvalidToken
        if not principal.can(SCOPE_READ):
            raise MissingScope(SCOPE_READ)
        return principal

    def reader_from_header(self, authorization: str | None) -> Principal:
        """Read an `Authorization: Bearer <token>` header value, then as `reader`."""
        if not authorization:
            raise InvalidToken("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("expected 'Authorization: Bearer <token>'")
        return self.reader(token.strip())
