"""A short `make chaos` against the session's fleet: Kafka nodes and one instance of each
service killed with -9 and restarted under load lose no job, and no client following a job
sees a gap or a duplicate. Also the client's own bookkeeping of seqs, without a fleet."""

from __future__ import annotations

import pytest

from deploy.chaos.figures import Figures
from deploy.chaos.follower import SeqCheck
from deploy.chaos.run import ChaosOptions, run_chaos
from tests.fleet.conftest import RunningFleet


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
@pytest.mark.kills  # after the other fleet tests (tests/fleet/conftest.py)
@pytest.mark.timeout(420, func_only=True)  # ten restarts waited for, then a drain
async def test_two_rounds_of_kill_9_lose_no_job_and_no_client_sees_a_gap_or_duplicate(
    fleet: RunningFleet,
) -> None:
    options = ChaosOptions(
        rounds=2, rate=2.0, tokens=200, tokens_per_s=100, warmup_s=3, pause_s=0.5,
        drain_timeout_s=90,
    )  # fmt: skip
    figures: Figures = await run_chaos(fleet.fleet, options, say=print)
    print(figures.table())
    assert figures.kills == 2 * 5  # a Kafka node and one of each of the four services a round
    assert figures.submitted >= 20, "the load ran through the rounds"
    assert figures.lost == 0, figures.lost_jobs
    assert figures.completed_twice == 0, figures.twice
    assert figures.gaps == 0
    assert figures.duplicates == 0
    assert figures.clients_resumed > 0, "killing a notifier made its clients resume"
    assert figures.redirects > 0, "the clients that start at the other notifier are redirected"


def test_seqs_of_one_attempt_in_order_are_neither_gap_nor_duplicate() -> None:
    check = SeqCheck()
    for seq in range(5):
        check.chunk(1, seq)
    assert (check.gaps, check.duplicates, check.last_seq) == (0, 0, 4)


def test_a_skipped_seq_is_a_gap_and_a_repeated_one_a_duplicate() -> None:
    check = SeqCheck()
    for seq in (0, 1, 3, 3, 2):
        check.chunk(1, seq)
    assert (check.gaps, check.duplicates) == (1, 2)


def test_a_new_attempt_restarts_at_zero_and_the_old_attempt_counts_as_duplicate() -> None:
    check = SeqCheck()
    for attempt, seq in ((1, 0), (1, 1), (2, 0), (2, 1), (1, 2)):
        check.chunk(attempt, seq)
    assert (check.gaps, check.duplicates, check.attempt) == (0, 1, 2)


def test_a_new_attempt_that_does_not_start_at_zero_is_a_gap() -> None:
    check = SeqCheck()
    check.chunk(1, 0)
    check.chunk(2, 3)
    assert check.gaps == 1


def test_figures_fail_on_any_lost_twice_gap_or_duplicate() -> None:
    assert Figures(submitted=3, completed=3).ok
    for name in ("lost", "completed_twice", "gaps", "duplicates"):
        broken = Figures()
        setattr(broken, name, 1)
        assert not broken.ok
        assert f"{name}=1" in broken.table()
