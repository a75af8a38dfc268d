"""Webhooks without I/O: the signature a Standard Webhooks verifier accepts, each user's
secret, which addresses a webhook may reach, the retry schedule, the planner's reading of
events, and what the previous schema's consumers read of a job that names a webhook."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord
from pydantic import SecretStr, ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from services.gateway.admission import build_records
from services.gateway.admission_records import encode_record
from services.results.webhook_planner import Final, read_event
from shared.api import JobSubmission
from shared.contracts import JobAccepted, JobCompleted, JobCompletedData, TokenUsage, utcnow
from shared.webhook_defaults import WebhookDefaults, WebhookDefaultSet
from shared.webhooks import (
    AllowList,
    Schedule,
    Target,
    WebhookRefused,
    check_address,
    parse_url,
    resolve_checked,
    retriable_status,
    sign,
    signed_headers,
    signing_key,
    user_secret,
    webhook_id,
)
from tests.unit import contracts_v_prev as prev

KEY = b"a deployment key of at least thirty-two bytes"
BODY = b'{"type":"job.completed","job_id":"j-1","data":{"response":"hi \\u00e9"}}'


def test_the_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = user_secret(KEY, "alice")
    assert secret.startswith("whsec_")
    now = int(time.time())
    headers = signed_headers(secret, "msg_j-1_completed", now, BODY)
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "job.completed",
        "job_id": "j-1",
        "data": {"response": "hi é"},
    }
    # Its own signing says the same, byte for byte.
    assert headers["webhook-signature"] == Webhook(secret).sign(
        "msg_j-1_completed", datetime.fromtimestamp(now, UTC), BODY.decode()
    )


def test_a_signature_fails_for_another_user_a_changed_body_or_another_id() -> None:
    alice, bob = user_secret(KEY, "alice"), user_secret(KEY, "bob")
    assert alice != bob
    now = int(time.time())
    headers = signed_headers(alice, "msg_j-1_completed", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(bob).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(alice).verify(BODY.replace(b"hi", b"ho"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(alice).verify(BODY, {**headers, "webhook-id": "msg_j-2_completed"})


def test_the_signing_key_falls_back_to_one_derived_from_the_token_secret() -> None:
    auth = SecretStr("x" * 32)
    derived = signing_key(SecretStr(""), auth)
    assert derived != auth.get_secret_value().encode()
    assert signing_key(SecretStr("own key"), auth) == b"own key"
    assert user_secret(derived, "alice") != user_secret(b"own key", "alice")


def test_the_webhook_id_is_the_same_for_every_try_of_one_final_event() -> None:
    assert webhook_id("j-1", "job.completed") == "msg_j-1_completed"
    assert webhook_id("j-1", "job.failed") != webhook_id("j-1", "job.cancelled")
    assert sign(user_secret(KEY, "a"), "msg_x", 1, b"{}").startswith("v1,")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
    ],
)
def test_private_loopback_link_local_multicast_and_reserved_addresses_are_refused(
    address: str,
) -> None:
    with pytest.raises(WebhookRefused):
        check_address(ipaddress.ip_address(address), address, AllowList())


def test_public_addresses_pass_and_the_allow_list_admits_hosts_and_networks() -> None:
    check_address(ipaddress.ip_address("93.184.216.34"), "example.com", AllowList())
    allow = AllowList.parse("127.0.0.0/8, hooks.internal ,fd00::/8")
    check_address(ipaddress.ip_address("127.0.0.1"), "127.0.0.1", allow)
    check_address(ipaddress.ip_address("10.0.0.5"), "Hooks.Internal.", allow)
    check_address(ipaddress.ip_address("fd00::5"), "fd00::5", allow)
    with pytest.raises(WebhookRefused):
        check_address(ipaddress.ip_address("10.0.0.5"), "other.internal", allow)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "example.com/hook",
        "https:///nohost",
        "https://user:pw@example.com/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_urls_that_are_not_plain_http_or_https_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        parse_url(url)
    with pytest.raises(ValidationError):
        JobSubmission(prompt="hi", webhook_url=url)


def test_a_url_is_read_with_its_default_port() -> None:
    assert parse_url("https://example.com/h") == Target(
        "https://example.com/h", "https", "example.com", 443
    )
    assert parse_url("http://[::1]:8080/h").host == "::1"


async def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed() -> None:
    target = parse_url("http://localhost:9/hook")
    with pytest.raises(WebhookRefused, match="loopback"):
        await resolve_checked(target, AllowList())
    addresses = await resolve_checked(target, AllowList.parse("127.0.0.0/8,::1/128"))
    assert all(a.is_loopback for a in addresses)


def test_the_default_schedule_is_standard_webhooks_and_ends_within_24_hours() -> None:
    schedule = Schedule()
    first = datetime(2026, 12, 1, tzinfo=UTC)
    now, attempt, delays = first, 1, []
    while (due := schedule.next_try(attempt, first, now)) is not None:
        delays.append((due - now).total_seconds())
        now, attempt = due, attempt + 1
    # The last 10 h would pass the 24 h: that try is made at the end of the window.
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 24 * 3600 - 63305]
    assert now - first == timedelta(hours=24)


def test_a_schedule_setting_is_read_and_a_bad_one_refused() -> None:
    schedule = Schedule.parse("0.5, 1", window_s=10)
    first = datetime(2026, 12, 1, tzinfo=UTC)
    assert schedule.next_try(1, first, first) == first + timedelta(seconds=0.5)
    assert schedule.next_try(5, first, first) == first + timedelta(seconds=1)  # last repeats
    late = first + timedelta(seconds=9.5)
    assert schedule.next_try(5, first, late) == first + timedelta(seconds=10)
    assert schedule.next_try(6, first, first + timedelta(seconds=10)) is None
    for bad in ("", "1,-1", "0"):
        with pytest.raises(ValueError, match="positive"):
            Schedule.parse(bad, 10)


@pytest.mark.parametrize(
    ("status", "retriable"),
    [(500, True), (503, True), (429, True), (408, True), (409, True), (400, False), (404, False)],
)
def test_which_answers_are_tried_again(status: int, retriable: bool) -> None:
    assert retriable_status(status) is retriable


def _accepted(webhook_url: str | None) -> bytes:
    submission = JobSubmission(prompt="hi", webhook_url=webhook_url)
    accepted, _ = build_records(
        submission,
        user_id="alice",
        job_id="j-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=utcnow(),
    )
    return encode_record(accepted)


def test_the_planner_reads_the_url_of_an_accepted_job_and_the_final_event() -> None:
    assert read_event(_accepted("https://example.com/h")) == (
        "j-1",
        "alice",
        "https://example.com/h",
    )
    assert read_event(_accepted(None)) is None
    completed = JobCompleted(
        job_id="j-1",
        data=JobCompletedData(
            attempt=1,
            response="done",
            model="m",
            usage=TokenUsage(),
            chunks=1,
            last_seq=0,
            duration_ms=1.0,
        ),
    ).to_bytes()
    final = read_event(completed)
    assert isinstance(final, Final)
    assert final.event_type == "job.completed" and final.payload == completed.decode()
    for garbage in (b"", b"not json", b"[]", b'{"type":"job.completed"}'):
        assert read_event(garbage) is None


def test_the_previous_schema_reads_a_job_that_names_a_webhook_and_the_new_one_keeps_it() -> None:
    wire = _accepted("https://example.com/h")
    old = prev.JobAccepted.model_validate_json(wire)
    assert old.data.prompt == "hi"
    new = JobAccepted.model_validate_json(wire)
    assert new.data.webhook_url == "https://example.com/h"
    assert new.to_bytes() == wire
    # And a record of the previous schema has no webhook.
    older = prev.JobAccepted(
        job_id=str(uuid.uuid4()),
        data=prev.JobAcceptedData(
            user_id="bob",
            prompt="x",
            job_type="analysis",
            priority="normal",
            config=prev.ModelConfig(),
            submitted_at=utcnow(),
        ),
    )
    assert JobAccepted.model_validate_json(older.model_dump_json()).data.webhook_url is None


def _default_record(offset: int, user: str, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "p.webhook-defaults", 0, offset, 0, 0, user.encode(), value, None, 0, 0, []
    )


def test_the_defaults_follow_the_topic_last_record_wins_and_null_clears() -> None:
    defaults = WebhookDefaults()
    at = utcnow()
    first = WebhookDefaultSet(user_id="alice", url="https://a.example/1", set_at=at)
    second = WebhookDefaultSet(user_id="alice", url="https://a.example/2", set_at=at)
    cleared = WebhookDefaultSet(user_id="bob", url=None, set_at=at)
    defaults.apply_record(_default_record(0, "alice", first.model_dump_json().encode()))
    defaults.apply_record(_default_record(1, "bob", b"https://b.example"))  # unreadable: skipped
    defaults.apply_record(_default_record(2, "alice", second.model_dump_json().encode()))
    assert defaults.get("alice") == "https://a.example/2" and defaults.get("bob") is None
    defaults.apply("bob", "https://b.example/")
    defaults.apply_record(_default_record(3, "bob", cleared.model_dump_json().encode()))
    defaults.apply_record(_default_record(4, "alice", None))  # a tombstone
    assert len(defaults) == 0


def test_the_planner_reads_a_record_whatever_the_order_of_its_fields() -> None:
    # Another producer may write `type` later, or with spaces: parsed then, not skipped.
    record = {
        "job_id": "j-2",
        "data": {"user_id": "bob", "webhook_url": "https://b.example/h"},
        "type": "job.accepted",
    }
    assert read_event(json.dumps(record).encode()) == ("j-2", "bob", "https://b.example/h")
    started = b'{"type":"job.started","job_id":"j-2","data":{"attempt":1,"worker":"w"}}'
    assert read_event(started) is None
