"""The installed `streamjobs` command (the venv's console script, run as a subprocess) against
the whole running system, and once in a real terminal (tmux) to see its progress bar."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from deploy.localstack.procs import free_port
from deploy.localstack.stack import Stack
from shared.client.commands import (
    EXIT_CANCELLED,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

STREAMJOBS = Path(sys.executable).parent / "streamjobs"


def cli_env(tmp_path: Path, url: str, token: str, ws_url: str = "") -> dict[str, str]:
    """The environment of a shell that exported the stack's settings, and nothing else of
    streamjobs (an empty state directory: no stack.env is read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMJOBS_")}
    env.update(
        STREAMJOBS_URL=url,
        STREAMJOBS_TOKEN=token,
        STREAMJOBS_WS_URL=ws_url,
        STREAMJOBS_STATE_DIR=str(tmp_path),
        COLUMNS="200",  # tables keep whole job ids on one line
    )
    return env


async def streamjobs(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the command; its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(STREAMJOBS),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"streamjobs {shlex.join(args)} ran over {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def system_env(system: Stack, token: str, tmp_path: Path) -> dict[str, str]:
    urls = system.urls()
    return cli_env(tmp_path, urls["gateway"], token, urls["notifier_ws"])


async def test_submit_follow_streams_the_stored_text_then_result_jobs_and_status_agree(
    system: Stack, user_token: str, tmp_path: Path
) -> None:
    env = system_env(system, user_token, tmp_path)
    code, out, err = await streamjobs(
        env,
        "submit",
        "--follow",
        "--max-tokens",
        "60",
        "--priority",
        "high",
        "Explain streaming. [[sim tokens=60]]",
    )
    assert code == EXIT_OK, err
    job_id = err.split()[1]  # "job <id> (analysis, high)"
    text = out.removesuffix("\n")

    code, out, err = await streamjobs(env, "result", "--json", "--wait", "30", job_id)
    assert code == EXIT_OK, err
    stored = json.loads(out)
    assert stored["job_id"] == job_id and stored["status"] == "completed"
    assert stored["response"] == text and text

    code, out, err = await streamjobs(env, "result", job_id)
    assert code == EXIT_OK, err
    assert "completed" in out and stored["response"].split()[0] in out

    code, out, _ = await streamjobs(env, "jobs", "--status", "completed")
    assert code == EXIT_OK and job_id in out
    code, out, _ = await streamjobs(env, "jobs", "--status", "queued", "--json")
    assert code == EXIT_OK and job_id not in out
    code, out, _ = await streamjobs(env, "jobs", "--priority", "high", "--json")
    assert code == EXIT_OK
    assert [json.loads(line)["job_id"] for line in out.splitlines()] == [job_id]

    code, out, _ = await streamjobs(env, "status", "--json", job_id)
    assert code == EXIT_OK and json.loads(out)["status"] == "completed"

    async def counted() -> str | None:
        code, out, _ = await streamjobs(env, "analytics", "--group-by", "priority", "--json")
        return out if code == EXIT_OK and json.loads(out)["totals"]["jobs"] >= 1 else None

    figures = json.loads(await wait_for(counted, timeout=30, message="the job is counted"))
    assert [row["priority"] for row in figures["rows"]] == ["high"]
    code, out, _ = await streamjobs(env, "analytics", "--group-by", "priority")
    assert code == EXIT_OK and "high" in out and "total" in out

    code, _, err = await streamjobs(env, "submit", "--max-tokens", "0", "no tokens at all")
    assert code == EXIT_USAGE and "422" in err


async def test_cancel_then_follow_status_and_result_exit_as_cancelled(
    system: Stack, user_token: str, tmp_path: Path
) -> None:
    env = system_env(system, user_token, tmp_path)
    code, out, err = await streamjobs(env, "submit", "Take long. [[sim tokens=4000 tps=20]]")
    assert code == EXIT_OK, err
    job_id = out.strip()

    async def running() -> bool:
        code, out, _ = await streamjobs(env, "status", "--json", job_id)
        return code == EXIT_OK and json.loads(out)["status"] == "running"

    await wait_for(running, timeout=30, interval=0.3, message="the job starts")
    code, out, err = await streamjobs(env, "cancel", job_id)
    assert code == EXIT_OK, err
    assert f"job {job_id} was running" in out

    code, _, err = await streamjobs(env, "follow", job_id)
    assert code == EXIT_CANCELLED, err
    assert "job.cancelled" in err
    code, out, _ = await streamjobs(env, "status", "--json", job_id)
    assert code == EXIT_CANCELLED and json.loads(out)["status"] == "cancelled"
    code, out, _ = await streamjobs(env, "result", "--json", "--wait", "30", job_id)
    assert code == EXIT_CANCELLED and json.loads(out)["status"] == "cancelled"

    code, _, err = await streamjobs(env, "status", "no-such-job")
    assert code == EXIT_DENIED and "404" in err
    stranger = {**env, "STREAMJOBS_TOKEN": "not-a-token"}
    code, _, err = await streamjobs(stranger, "jobs")
    assert code == EXIT_DENIED and "401" in err


async def test_retry_runs_a_failed_job_again_and_refuses_a_completed_one(
    system: Stack, user_token: str, tmp_path: Path
) -> None:
    env = system_env(system, user_token, tmp_path)
    code, out, err = await streamjobs(env, "submit", "--follow", "Fail. [[sim fail=400]]")
    assert code == EXIT_FAILED, err
    job_id = err.split()[1]

    async def stored_as(job: str, status: str) -> bool:
        code, out, _ = await streamjobs(env, "status", "--json", job)
        return code != EXIT_DENIED and json.loads(out)["status"] == status

    await wait_for(lambda: stored_as(job_id, "failed"), timeout=30, message="the job is stored")
    code, out, err = await streamjobs(env, "retry", job_id)
    assert code == EXIT_OK, err
    new = out.strip()
    assert new and new != job_id
    code, out, err = await streamjobs(env, "retry", "--follow", job_id)
    assert code == EXIT_FAILED, err  # the same prompt fails again
    assert f"retries {job_id}" in err and "job.failed" in err
    code, out, _ = await streamjobs(env, "status", "--json", new)
    assert code in (EXIT_OK, EXIT_FAILED) and json.loads(out)["retry_of"] == job_id

    code, out, err = await streamjobs(env, "submit", "--follow", "Fine. [[sim tokens=5]]")
    assert code == EXIT_OK, err
    done = err.split()[1]
    await wait_for(lambda: stored_as(done, "completed"), timeout=30, message="stored")
    code, _, err = await streamjobs(env, "retry", done)
    assert code == EXIT_REFUSED and "409" in err and "only failed or cancelled" in err
    code, _, err = await streamjobs(env, "retry", "no-such-job")
    assert code == EXIT_DENIED and "404" in err


async def test_an_unreachable_gateway_and_bad_usage_have_their_own_exit_codes(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path, f"http://127.0.0.1:{free_port()}", "any")
    code, _, err = await streamjobs(env, "jobs")
    assert code == EXIT_UNREACHABLE and "cannot reach" in err
    code, _, err = await streamjobs(env, "submit")
    assert code == EXIT_USAGE and "prompt" in err
    code, _, err = await streamjobs(env, "jobs", "--status", "sleeping")
    assert code == EXIT_USAGE


async def test_the_local_stack_commands_run_the_stack_tools(tmp_path: Path) -> None:
    env = cli_env(tmp_path, "http://127.0.0.1:1", "any")  # a state directory with nothing
    code, out, _ = await streamjobs(env, "doctor", "--help")
    assert code == EXIT_OK and "--monitor" in out and "--timeout" in out
    code, out, _ = await streamjobs(env, "down")
    assert code == EXIT_OK and "stack stopped" in out


async def test_in_a_real_terminal_submit_follow_shows_a_progress_bar_of_tokens(
    system: Stack, user_token: str, tmp_path: Path
) -> None:
    env = system_env(system, user_token, tmp_path)
    script = tmp_path / "run.sh"
    exports = "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.startswith("STREAMJOBS_")
    )
    command = shlex.join(
        [
            str(STREAMJOBS),
            "submit",
            "--follow",
            "--max-tokens",
            "200",
            "Stream slowly. [[sim tokens=200 tps=25]]",
        ]
    )
    script.write_text(f"{exports}unset COLUMNS LINES\n{command}\necho streamjobs-exit=$?\n")
    terminal = Terminal()
    await asyncio.to_thread(terminal.start, f"sh {shlex.quote(str(script))}")
    try:

        async def showing(text: str) -> str | None:
            shown = await asyncio.to_thread(terminal.screen)
            return shown if text in shown else None

        async def bar_midway() -> str | None:
            shown = await asyncio.to_thread(terminal.screen)
            counts = [int(n) for n in re.findall(r"(\d+)/200 tokens", shown)]
            return shown if counts and 0 < counts[0] < 200 else None

        midway = await wait_for(bar_midway, timeout=30, interval=0.2, message="the bar shows")
        bar = next(line for line in midway.splitlines() if "/200 tokens" in line)
        assert "attempt 1" in bar and "tok/s" in bar and "━" in bar, bar
        assert "streamjobs-exit=" not in midway, "the bar showed only once the job had ended"
        done = await wait_for(
            lambda: showing("streamjobs-exit="), timeout=60, interval=0.3, message="it ends"
        )
        assert "streamjobs-exit=0" in done
        assert "200/200 tokens" in done, done
    finally:
        await asyncio.to_thread(terminal.stop)


class Terminal:
    """A 120x30 terminal of a tmux server of this test's own (its own socket)."""

    def __init__(self) -> None:
        self.tmux = ["tmux", "-L", f"sj-{uuid.uuid4().hex[:8]}"]

    def start(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-x", "120", "-y", "30", "-s", "cli"],
            check=True,
            env=env,
        )
        subprocess.run([*self.tmux, "send-keys", "-t", "cli", command, "Enter"], check=True)

    def screen(self) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", "cli"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def stop(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False, capture_output=True)
