"""The notifier's guards without I/O: caps, token checks, the bounded outbox, fixed ownership."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from services.notifier.access import MAX_TOKEN_CHARS, MissingScope, TokenCheck
from services.notifier.client import Client
from services.notifier.frames import control
from services.notifier.hub import Hub
from services.notifier.limits import ConnectionLimits, TooManyConnections
from services.notifier.metrics import NotifierMetrics
from services.notifier.owners import OwnerIndex
from services.notifier.protocol import BadMessage, Ping, parse_message
from services.notifier.settings import NotifierSettings
from shared.auth import InvalidToken, Principal, issue_token
from shared.verifier import TokenVerifier
from tests.unit.test_notifier_state import JOB, accepted, chunk, completed, queued

SECRET = "s" * 32


def make_hub(**kwargs: int) -> Hub:
    return Hub(NotifierMetrics(CollectorRegistry()), owners=OwnerIndex(1000), **kwargs)  # type: ignore[arg-type]


def reader(user: str = "alice", limit: int = 100) -> Client:
    return Client(Principal(user, frozenset({"jobs:read"})), limit)


# -- caps ------------------------------------------------------------------------------------


def test_process_cap_counts_every_open_connection_and_frees_on_close() -> None:
    limits = ConnectionLimits(max_total=2, max_per_user=10)
    limits.open()
    limits.open()
    with pytest.raises(TooManyConnections) as caught:
        limits.open()
    assert not caught.value.per_user and caught.value.retriable
    limits.close()
    limits.open()
    assert limits.total == 2


def test_user_cap_is_per_user_and_frees_on_unbind() -> None:
    limits = ConnectionLimits(max_total=100, max_per_user=2)
    limits.bind("alice")
    limits.bind("alice")
    limits.bind("bob")
    with pytest.raises(TooManyConnections) as caught:
        limits.bind("alice")
    assert caught.value.per_user
    limits.unbind("alice")
    limits.bind("alice")
    limits.unbind("bob")
    assert (limits.of_user("alice"), limits.of_user("bob")) == (2, 0)


# -- tokens ----------------------------------------------------------------------------------


def test_token_without_jobs_read_is_refused_for_its_scope() -> None:
    check = TokenCheck(TokenVerifier(SECRET))
    assert check.reader(issue_token(SECRET, "alice", ["jobs:read"])).user_id == "alice"
    assert check.reader(issue_token(SECRET, "ops", ["admin"])).is_admin
    with pytest.raises(MissingScope):
        check.reader(issue_token(SECRET, "alice", ["jobs:write"]))


@pytest.mark.parametrize(
    "tok",
    [
        "",
        "sj1.é.é",  # non-ASCII: the signature comparison itself would raise TypeError
        "sj1." + "a" * MAX_TOKEN_CHARS + ".b",
        "sj1.\x00.\ud800",
        "garbage",
        "sj1.a.b.c",
    ],
)
def test_garbage_tokens_are_invalid_not_an_error(tok: str) -> None:
    with pytest.raises(InvalidToken):
        TokenCheck(TokenVerifier(SECRET)).reader(tok)


def test_bearer_header_is_checked_the_same_way() -> None:
    check = TokenCheck(TokenVerifier(SECRET))
    good = issue_token(SECRET, "alice", ["jobs:read"])
    assert check.reader_from_header(f"Bearer {good}").user_id == "alice"
    for bad in (None, "", "Basic x", "Bearer ", "Bearer \u00e9"):
        with pytest.raises(InvalidToken):
            check.reader_from_header(bad)


# -- client messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"type": "ping", "id": "x" * 65}),
        json.dumps({"type": "ping", "id": {"a": 1}}),
        json.dumps({"type": "ping", "id": 2**60}),
        '{"type":"ping","id":"\\ud800"}',
        '{"type":"ping","id":1e999}',
        '{"type":"subscribe","channel":"job:\\ud800"}',
        '{"type":"subscribe","channel":"job:a\\u0000b"}',
    ],
)
def test_ping_ids_and_channel_ids_that_could_not_be_echoed_safely_are_refused(raw: str) -> None:
    with pytest.raises(BadMessage):
        parse_message(raw)


def test_deep_nesting_is_bad_json_not_a_recursion_error() -> None:
    with pytest.raises(BadMessage) as caught:
        parse_message("[" * 100_000)
    assert caught.value.code == "bad_json"
    assert parse_message('{"type":"ping","id":"abc"}') == Ping("abc")


# -- the bounded outbox ----------------------------------------------------------------------


def test_replies_to_a_client_that_does_not_read_end_in_a_resync_then_close_4008() -> None:
    h = make_hub(max_resyncs=2)
    killed: list[int] = []
    c = Client(
        Principal("alice", frozenset({"jobs:read"})), 4, kill=lambda code, _: killed.append(code)
    )
    h.on_event(accepted(), 0.0)
    h.subscribe_job(c, JOB, -1, None, 0.0)
    pongs = 0
    while not killed and pongs < 1000:
        h.reply(c, [control("pong", id=pongs)])
        pongs += 1
        assert len(c) <= 4 + 1, "the outbox grew past its bound"
    assert killed == [4008]
    assert pongs < 20


def test_subscription_replay_to_a_full_outbox_is_a_resync_naming_the_channel() -> None:
    h = make_hub()
    h.on_event(accepted(), 0.0)
    for seq in range(3):
        h.on_chunk(chunk(seq), 0.0)
    c = reader(limit=2)
    h.reply(c, [control("pong"), control("pong")])
    h.subscribe_job(c, JOB, -1, None, 0.0)
    msgs = queued(c)
    assert [m["type"] for m in msgs] == ["resync"]
    assert msgs[0]["channel"] == f"job:{JOB}"


def test_more_chunks_in_one_batch_than_the_bound_reach_a_client_whose_socket_takes_them() -> None:
    # One Kafka fetch can bring more of a job's chunks than the outbox holds, all queued
    # before the turn's flush: a client whose socket takes them is written through, not
    # told to resync; one whose socket takes nothing is a slow consumer after `limit`.
    h = make_hub()
    h.on_event(accepted(), 0.0)
    sent: list[object] = []
    live = Client(
        Principal("alice", frozenset({"jobs:read"})),
        4,
        drain=lambda c: sent.extend(c.take_now(1 << 30)),
    )
    deaf = Client(Principal("alice", frozenset({"jobs:read"})), 4, drain=lambda _c: None)
    h.subscribe_job(live, JOB, -1, None, 0.0)
    h.subscribe_job(deaf, JOB, -1, None, 0.0)
    for seq in range(50):
        h.on_chunk(chunk(seq), 0.0)
    got = [json.loads(f.text) for f in [*sent, *live.take_now(1 << 30)]]
    assert [m["seq"] for m in got if m["type"] == "chunk"] == list(range(50))
    assert live.resyncs == 0
    assert deaf.resyncs >= 1
    assert len(deaf) <= 4 + 1


def test_outbox_counts_the_characters_it_holds() -> None:
    c = reader()
    frame = control("pong", id="abc")
    c.push([frame, frame])
    assert c.queued_chars == 2 * len(frame.text)
    c.offer(frame)
    assert c.queued_chars == 3 * len(frame.text)


# -- ownership -------------------------------------------------------------------------------


def test_a_second_accepted_with_another_user_does_not_change_the_owner() -> None:
    h = make_hub()
    h.on_event(accepted("alice"), 0.0)
    h.on_event(accepted("mallory"), 0.0)
    assert h.jobs[JOB].owner == "alice"
    mallory = reader("mallory")
    h.subscribe_job(mallory, JOB, -1, None, 0.0)
    h.sweep(10.0)
    assert queued(mallory)[0]["code"] == "forbidden"


def test_a_redelivered_accepted_is_not_sent_twice_to_the_user_channel() -> None:
    h = make_hub()
    c = reader()
    h.subscribe_user(c, "alice")
    h.on_event(accepted("alice"), 0.0)
    h.on_event(accepted("alice"), 0.0)
    assert [m.get("event") for m in queued(c)] == [None, "job.accepted"]


def test_owner_index_keeps_the_first_owner_and_the_first_end_and_is_bounded() -> None:
    index = OwnerIndex(max_jobs=2)
    assert index.accepted("a", "alice") == "alice"
    assert index.accepted("a", "mallory") == "alice"
    index.ended("a", "completed")
    index.ended("a", "failed")
    assert (index.owner("a"), index.status("a")) == ("alice", "completed")
    index.accepted("b", "bob")
    index.accepted("c", "carol")
    assert index.owner("a") is None and len(index) == 2
    assert index.status("b") is None


def test_owner_of_a_job_older_than_the_history_gets_a_resync_not_a_refusal() -> None:
    h = make_hub()
    h.on_history(accepted("alice"))
    h.on_history(completed(9))
    h.on_history(accepted("mallory"))  # a later claim is ignored, before the window too
    alice, mallory = reader("alice"), reader("mallory")
    h.subscribe_job(alice, JOB, 4, 1, 0.0)
    h.subscribe_job(mallory, JOB, -1, None, 0.0)
    h.sweep(10.0)
    got = queued(alice)
    assert [m["type"] for m in got] == ["subscribed", "resync"]
    assert got[1]["reason"] == "history unavailable"
    assert got[1]["status"] == "completed"
    assert queued(mallory)[0]["code"] == "forbidden"


def test_live_chunks_of_an_old_job_read_before_its_accepted_still_reach_the_owner() -> None:
    h = make_hub()
    h.on_chunk(chunk(40), 0.0)  # the chunks topic may be read ahead of the events topic
    h.on_history(accepted("alice"))
    c = reader()
    h.subscribe_job(c, JOB, 10, 1, 0.0)
    h.on_chunk(chunk(41), 0.0)
    msgs = queued(c)
    assert [m["type"] for m in msgs] == ["subscribed", "resync", "chunk", "chunk"]
    assert [m["seq"] for m in msgs if m["type"] == "chunk"] == [40, 41]


def test_notifier_binds_loopback_by_default() -> None:
    settings = NotifierSettings(streamjobs_auth_secret=SECRET)
    assert settings.notifier_host == "127.0.0.1"
