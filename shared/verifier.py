"""Token verification for a running service: an LRU of verified tokens and the revoked ids.

One `TokenVerifier` is built in each composition root and handed to every handler that
reads a token. A cache hit costs a dict lookup and two comparisons, so the signature is
checked once per token rather than once per request; the revoked set is read on every
hit, so a revocation applies to cached tokens too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from shared.auth import (
    DEFAULT_LEEWAY_S,
    InvalidToken,
    Principal,
    VerifiedToken,
    bearer_token,
    decode_token,
)
from shared.settings import CommonSettings

DEFAULT_CACHE_SIZE = 10_000
# Expired revocations are dropped in batches, not on every insert.
PRUNE_EVERY = 1024


class TokenVerifier:
    def __init__(
        self,
        secret: str,
        *,
        leeway_s: float = DEFAULT_LEEWAY_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._leeway_s = leeway_s
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._revoked: dict[str, float] = {}  # jti -> the token's expiry
        self._since_prune = 0
        self._listeners: list[Callable[[str], None]] = []

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> TokenVerifier:
        return cls(
            settings.streamjobs_auth_secret.get_secret_value(),
            leeway_s=settings.streamjobs_auth_leeway_s,
            cache_size=settings.streamjobs_auth_cache_size,
        )

    def verify(self, token: str) -> Principal:
        """The principal of `token`; InvalidToken if it is bad, expired or revoked."""
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            if now >= hit.expires_at:
                del self._cache[token]
                raise InvalidToken("token expired")
            self._cache.move_to_end(token)
            verified = hit
        else:
            verified = decode_token(self._secret, token, now=now, leeway_s=self._leeway_s)
            if self._cache_size > 0:
                self._cache[token] = verified
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if verified.principal.token_id in self._revoked:
            raise InvalidToken("token revoked")
        return verified.principal

    def from_header(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <token>` header value."""
        return self.verify(bearer_token(authorization))

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call `listener(token_id)` on each revocation: e.g. to close streams it opened."""
        self._listeners.append(listener)

    def revoke(self, token_id: str, expires_at: float) -> None:
        """Refuse the token `token_id` from now on (until its own expiry makes it moot)."""
        now = self._clock()
        if expires_at <= now:
            return
        self._revoked[token_id] = expires_at
        for listener in self._listeners:
            listener(token_id)
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > now}

    def unrevoke(self, token_id: str) -> None:
        """A tombstone on the revocations topic: the entry was withdrawn or pruned."""
        self._revoked.pop(token_id, None)

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    @property
    def revoked_count(self) -> int:
        return len(self._revoked)

    @property
    def cached_count(self) -> int:
        return len(self._cache)
