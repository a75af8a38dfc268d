"""Webhooks, the parts every service agrees on: Standard Webhooks signing, each user's
secret, which addresses a webhook may reach, and when a failed delivery is tried again.

No I/O here but the name lookup of `resolve_checked`; the gateway checks a URL at submit
with it and the deliverer checks the address it connects to, so a name that resolves to a
private address later (DNS rebinding) is still refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
MAX_URL_CHARS = 2048
# Standard Webhooks' (and Svix's) schedule after the first try, in seconds.
DEFAULT_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DEFAULT_WINDOW_S = 24 * 3600.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookSettings(BaseSettings):
    """The settings the gateway (submit checks, the secret) and results (delivery) share."""

    webhook_signing_key: SecretStr = Field(
        default=SecretStr(""),
        description="deployment secret each user's webhook secret is derived from; empty:"
        " derived from STREAMJOBS_AUTH_SECRET",
    )
    webhook_allow: str = Field(
        default="",
        description="comma-separated hosts and CIDRs a webhook may reach although private,"
        " loopback or reserved (e.g. 10.0.0.0/8,hooks.internal)",
    )


class WebhookRefused(ValueError):
    """A webhook URL, or the address it resolves to, that may not be called; `reason` says
    why in words fit for a problem detail or a delivery record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- signing (https://www.standardwebhooks.com) ------------------------------------------


def signing_key(webhook_key: SecretStr, auth_secret: SecretStr) -> bytes:
    """The deployment's webhook key: its own setting, else one derived from the token
    secret (so a stack with only STREAMJOBS_AUTH_SECRET set still signs)."""
    own = webhook_key.get_secret_value()
    if own:
        return own.encode()
    return hashlib.sha256(
        b"streamjobs-webhooks:" + auth_secret.get_secret_value().encode()
    ).digest()


def user_secret(signing_key: bytes, user_id: str) -> str:
    """The user's `whsec_` secret: an HMAC of the user id under the deployment's key, so a
    user who knows their own secret learns nothing of another's."""
    raw = hmac.new(signing_key, b"streamjobs-webhook:" + user_id.encode(), hashlib.sha256)
    return SECRET_PREFIX + base64.b64encode(raw.digest()).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        HEADER_ID: webhook_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, webhook_id, timestamp, body),
        "Content-Type": "application/json",
    }


def webhook_id(job_id: str, event_type: str) -> str:
    """The same id for every try of one job's final event, so a receiver deduplicates by it."""
    return f"msg_{job_id}_{event_type.removeprefix('job.')}"


# --- where a webhook may go ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and networks exempt from the private-address rule (for in-cluster receivers)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        hosts: set[str] = set()
        networks: list[Network] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def address(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def _unreachable_kind(address: Address) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _unreachable_kind(address.ipv4_mapped)
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-global"


def check_address(address: Address, host: str, allow: AllowList) -> None:
    """Raise `WebhookRefused` unless `address` (of `host`) is public or allow-listed."""
    kind = _unreachable_kind(address)
    if kind is not None and not (allow.host(host) or allow.address(address)):
        raise WebhookRefused(f"{host} is a {kind} address ({address}), not allowed for webhooks")


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook URL, read: scheme, host (without brackets), port."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """Raise `WebhookRefused` unless `url` is an absolute http(s) URL a webhook may name."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookRefused(f"the URL has {len(url)} characters; at most {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("the URL must be http:// or https://")
    if not parts.hostname:
        raise WebhookRefused("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("the URL must not carry credentials")
    if any(ord(c) < 0x21 for c in url):
        raise WebhookRefused("the URL holds spaces or control characters")
    default = 443 if parts.scheme == "https" else 80
    return Target(url, parts.scheme, parts.hostname, port or default)


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve_checked(target: Target, allow: AllowList) -> list[Address]:
    """Every address `target`'s host resolves to, each checked: one refused refuses all (a
    name with one private address among public ones could be steered to it)."""
    literal = literal_address(target.host)
    if literal is not None:
        check_address(literal, target.host, allow)
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise Unresolved(f"{target.host} does not resolve: {exc.strerror}") from None
    addresses = _unique(ipaddress.ip_address(info[4][0]) for info in infos)
    if not addresses:
        raise Unresolved(f"{target.host} does not resolve")
    for address in addresses:
        check_address(address, target.host, allow)
    return addresses


class Unresolved(OSError):
    """The host has no address now: a delivery tries again later; a submission is taken."""


def _unique(addresses: Iterable[Address]) -> list[Address]:
    seen: list[Address] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    return seen


# --- when to try again ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Delays after each failed try (the last repeats), within `window_s` of the first try."""

    delays_s: Sequence[float] = DEFAULT_SCHEDULE_S
    window_s: float = DEFAULT_WINDOW_S

    @classmethod
    def parse(cls, text: str, window_s: float) -> Schedule:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
        if not delays or any(d <= 0 for d in delays):
            raise ValueError("the webhook schedule needs one or more positive delays (seconds)")
        return cls(delays, window_s)

    def next_try(self, attempt: int, first_try: datetime, now: datetime) -> datetime | None:
        """When to try after failed try number `attempt` (1-based), or None: give up.

        A delay that would pass the window's end is cut to it: the last try is made at the
        end of the window rather than not at all.
        """
        delay = self.delays_s[min(attempt, len(self.delays_s)) - 1]
        end = first_try + timedelta(seconds=self.window_s)
        if now >= end:
            return None
        return min(now + timedelta(seconds=delay), end)


def retriable_status(status: int) -> bool:
    """Standard Webhooks: 2xx is done; 408, 409, 429 and 5xx are tried again; other 4xx
    (and anything else) is the receiver's final word."""
    return status in (408, 409, 429) or status >= 500
