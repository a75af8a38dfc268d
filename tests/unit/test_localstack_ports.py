"""Ports the local stack and the tests hand to services they start."""

from __future__ import annotations

import socket

from deploy.localstack import procs


def test_a_port_is_never_handed_out_twice() -> None:
    ports = [procs.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_ports_lie_outside_the_range_outgoing_connections_take() -> None:
    low, high = procs._ephemeral_range()
    for _ in range(50):
        port = procs.free_port()
        assert not low <= port <= high
        assert port >= 1024


def test_a_port_something_listens_on_is_skipped(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken])
        real_choice = procs.random.choice
        monkeypatch.setattr(
            procs.random, "choice", lambda seq: next(picks, None) or real_choice(seq)
        )
        port = procs.free_port()
    assert port != taken
