"""API tokens: signed, scoped, expiring; a forged or stale token is refused."""

from __future__ import annotations

import pytest

from shared.auth import (
    SCOPE_ADMIN,
    InvalidToken,
    issue_token,
    principal_from_header,
    verify_token,
)

SECRET = "s3cret"


def test_token_carries_user_and_scopes() -> None:
    principal = verify_token(SECRET, issue_token(SECRET, "alice", ["jobs:read"]))
    assert principal.user_id == "alice"
    assert principal.can("jobs:read")
    assert not principal.can("jobs:write")
    assert principal.may_see("alice")
    assert not principal.may_see("bob")


def test_admin_scope_sees_everyone() -> None:
    admin = verify_token(SECRET, issue_token(SECRET, "ops", [SCOPE_ADMIN]))
    assert admin.may_see("bob")
    assert admin.can("jobs:write")


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(SECRET, issue_token("other", "alice"))


def test_tampered_payload_is_refused() -> None:
    prefix, _body, sig = issue_token(SECRET, "alice").split(".")
    forged_body = issue_token(SECRET, "admin", [SCOPE_ADMIN]).split(".")[1]
    with pytest.raises(InvalidToken):
        verify_token(SECRET, f"{prefix}.{forged_body}.{sig}")


def test_expired_token_is_refused() -> None:
    token = issue_token(SECRET, "alice", ttl_s=10, now=1000)
    assert verify_token(SECRET, token, now=1009).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now=1010)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer x.y", "Bearer a.b.c"])
def test_malformed_authorization_header_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidToken):
        principal_from_header(SECRET, header)
