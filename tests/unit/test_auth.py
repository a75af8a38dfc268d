"""API tokens: standard JWTs, signed, scoped, expiring, revocable; anything else is refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.auth import (
    ADMIN_TOKEN_TTL_S,
    AUDIENCE,
    ISSUER,
    MAX_TOKEN_BYTES,
    SCOPE_ADMIN,
    USER_TOKEN_TTL_S,
    InvalidToken,
    Principal,
    issue_token,
    principal_from_header,
    verify_token,
)
from shared.settings import CommonSettings
from shared.verifier import TokenVerifier

SECRET = "unit-secret-0123456789abcdef0123456789"
NOW = 1_780_000_000  # a past moment: PyJWT checks `iat` against the real clock


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "scope": "jobs:read",
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "t-1",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_token_carries_user_scopes_and_token_id() -> None:
    principal = verify_token(SECRET, issue_token(SECRET, "alice", ["jobs:read"], token_id="t-7"))
    assert principal == Principal("alice", frozenset({"jobs:read"}), token_id="t-7")
    assert principal.can("jobs:read")
    assert not principal.can("jobs:write")
    assert principal.may_see("alice")
    assert not principal.may_see("bob")


def test_admin_scope_sees_everyone() -> None:
    admin = verify_token(SECRET, issue_token(SECRET, "ops", [SCOPE_ADMIN]))
    assert admin.is_admin
    assert admin.may_see("bob")
    assert admin.can("jobs:write")


def test_token_is_a_standard_jwt_any_library_can_read() -> None:
    token = issue_token(SECRET, "alice", ["jobs:write", "jobs:read"], now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False},
    )
    assert payload["sub"] == "alice"
    assert payload["scope"] == "jobs:read jobs:write"
    assert payload["iat"] == NOW
    assert payload["exp"] == NOW + USER_TOKEN_TTL_S
    assert len(payload["jti"]) >= 16


def test_token_minted_by_another_system_is_accepted() -> None:
    token = jwt.encode(claims(scope="jobs:read admin"), SECRET, algorithm="HS256")
    principal = verify_token(SECRET, token, now=NOW + 1)
    assert principal.user_id == "alice"
    assert principal.scopes == {"jobs:read", "admin"}
    assert principal.token_id == "t-1"


def test_each_token_gets_its_own_id() -> None:
    ids = {verify_token(SECRET, issue_token(SECRET, "alice")).token_id for _ in range(50)}
    assert len(ids) == 50


def test_admin_tokens_live_a_day_and_user_tokens_thirty_days_by_default() -> None:
    admin = jwt.decode(
        issue_token(SECRET, "ops", [SCOPE_ADMIN], now=NOW), options={"verify_signature": False}
    )
    user = jwt.decode(issue_token(SECRET, "alice", now=NOW), options={"verify_signature": False})
    assert admin["exp"] - admin["iat"] == ADMIN_TOKEN_TTL_S == 24 * 3600
    assert user["exp"] - user["iat"] == USER_TOKEN_TTL_S == 30 * 24 * 3600


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, issue_token("another-secret-0123456789abcdef0123", "alice"))


def test_tampered_payload_is_refused() -> None:
    header, _body, sig = issue_token(SECRET, "alice").split(".")
    forged_body = issue_token(SECRET, "admin", [SCOPE_ADMIN]).split(".")[1]
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, f"{header}.{forged_body}.{sig}")


def test_unsigned_alg_none_token_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}.{b64(b'x')}"):
        with pytest.raises(InvalidToken):
            verify_token(SECRET, token, now=NOW)


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    with pytest.raises(InvalidToken, match="algorithm"):
        verify_token(SECRET + SECRET, token, now=NOW)


def test_expired_token_is_refused() -> None:
    token = issue_token(SECRET, "alice", ttl_s=10, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 9).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now=NOW + 10)


def test_token_issued_in_the_future_is_refused_beyond_the_leeway() -> None:
    token = issue_token(SECRET, "alice", now=NOW + 30)
    assert verify_token(SECRET, token, now=NOW + 26, leeway_s=5).user_id == "alice"
    with pytest.raises(InvalidToken, match="future"):
        verify_token(SECRET, token, now=NOW + 24, leeway_s=5)


@pytest.mark.parametrize("missing", ["sub", "scope", "iat", "exp", "jti", "iss", "aud"])
def test_token_without_a_required_claim_is_refused(missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="claim"):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"iss": "someone-else"},
        {"aud": "another-api"},
        {"sub": ""},
        {"sub": 42},
        {"scope": ["jobs:read"]},
        {"jti": ""},
        {"exp": "tomorrow"},
        {"iat": True},
        {"nbf": NOW + 3600},
    ],
)
def test_token_with_a_wrong_claim_is_refused(bad: dict[str, Any]) -> None:
    token = jwt.encode(claims(**bad), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "a.b",
        "a.b.c.d",
        "a.b.c",
        "ünïcødé.ü.ü",
        "eyJhbGciOiJIUzI1NiJ9.\udcff.x",
        "a" * (MAX_TOKEN_BYTES + 1),
        "....",
        "\x00.\x00.\x00",
    ],
)
def test_garbage_is_refused_as_invalid_token(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, garbage)


def test_a_valid_token_made_oversize_is_refused() -> None:
    token = jwt.encode(claims(pad="p" * MAX_TOKEN_BYTES), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="too long"):
        verify_token(SECRET, token, now=NOW)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_refused_only_as_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, text)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_mutated_token_is_refused_or_reads_the_same(data: st.DataObject) -> None:
    token = issue_token(SECRET, "alice", ["jobs:read"], now=NOW, token_id="t-1")
    at = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters())
    mutated = token[:at] + char + token[at + 1 :]
    try:
        principal = verify_token(SECRET, mutated, now=NOW)
    except InvalidToken:
        return
    # Base64 tail bits carry nothing: such an edit decodes to the very same token.
    assert principal == verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer x.y", "Bearer a.b.c"])
def test_malformed_authorization_header_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidToken):
        principal_from_header(SECRET, header)
    with pytest.raises(InvalidToken):
        TokenVerifier(SECRET).from_header(header)


def test_short_signing_secret_is_a_startup_error_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="STREAMJOBS_AUTH_SECRET"):
        CommonSettings(streamjobs_auth_secret="too-short")
    assert CommonSettings(streamjobs_auth_secret="x" * 32).streamjobs_auth_secret


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_verifier_reads_a_header_and_caches_the_verified_token() -> None:
    verifier = TokenVerifier(SECRET, clock=Clock(NOW))
    token = issue_token(SECRET, "alice", now=NOW)
    first = verifier.from_header(f"Bearer {token}")
    assert verifier.verify(token) is first
    assert verifier.cached_count == 1


def test_verifier_refuses_a_revoked_token_even_when_cached() -> None:
    verifier = TokenVerifier(SECRET, clock=Clock(NOW))
    token = issue_token(SECRET, "alice", now=NOW, token_id="t-9")
    other = issue_token(SECRET, "alice", now=NOW)
    verifier.verify(token)
    verifier.revoke("t-9", NOW + 3600)
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(token)
    assert verifier.verify(other).user_id == "alice"
    verifier.unrevoke("t-9")
    assert verifier.verify(token).token_id == "t-9"


def test_verifier_refuses_a_cached_token_once_it_expires() -> None:
    clock = Clock(NOW)
    verifier = TokenVerifier(SECRET, clock=clock)
    token = issue_token(SECRET, "alice", ttl_s=10, now=NOW)
    verifier.verify(token)
    clock.now = NOW + 10
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)
    assert verifier.cached_count == 0


def test_verifier_cache_is_bounded_least_recently_used_first() -> None:
    verifier = TokenVerifier(SECRET, cache_size=3, clock=Clock(NOW))
    tokens = [issue_token(SECRET, f"u{i}", now=NOW) for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert verifier.cached_count == 3


def test_revocation_of_an_expired_token_is_not_kept() -> None:
    verifier = TokenVerifier(SECRET, clock=Clock(NOW))
    verifier.revoke("old", NOW - 1)
    verifier.revoke("live", NOW + 60)
    assert not verifier.is_revoked("old")
    assert verifier.is_revoked("live")
    assert verifier.revoked_count == 1
