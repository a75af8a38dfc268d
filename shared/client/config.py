"""Where the client connects and with which token: arguments first, then the environment
(`STREAMJOBS_URL`, `STREAMJOBS_TOKEN`, `STREAMJOBS_WS_URL`), then `.state/stack.env`, the file
`make run` writes (`STREAMJOBS_STATE_DIR/stack.env`; else `./.state/stack.env`, else the one
of the checkout this package runs from)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"
NAMES = ("STREAMJOBS_URL", "STREAMJOBS_TOKEN", "STREAMJOBS_WS_URL")


@dataclass(frozen=True, slots=True)
class Connection:
    url: str  # the gateway's base URL, no trailing slash
    token: str  # empty: requests go without one (and are refused where one is needed)
    ws_url: str | None  # the notifier's WebSocket when a job names none (links.websocket)


CHECKOUT = Path(__file__).resolve().parents[2]


def stack_env_path(environ: Mapping[str, str]) -> Path:
    if environ.get("STREAMJOBS_STATE_DIR"):
        return Path(environ["STREAMJOBS_STATE_DIR"]) / "stack.env"
    here = Path(".state") / "stack.env"
    return here if here.is_file() else CHECKOUT / ".state" / "stack.env"


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME='value'` lines of a stack.env (what a shell would source); {} if none."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # an unbalanced quote: not a line this file's writer makes
        if words[:1] == ["export"]:
            words = words[1:]
        for word in words:
            name, sep, value = word.partition("=")
            if sep and name in NAMES:
                values[name] = value
    return values


def resolve(
    url: str | None = None,
    token: str | None = None,
    ws_url: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = None,
) -> Connection:
    env = os.environ if environ is None else environ
    file: dict[str, str] | None = None

    def pick(given: str | None, name: str) -> str | None:
        nonlocal file
        if given:
            return given
        if env.get(name):
            return env[name]
        if file is None:  # read once, and only when something is still missing
            file = read_env_file(env_file or stack_env_path(env))
        return file.get(name) or None

    return Connection(
        url=(pick(url, "STREAMJOBS_URL") or DEFAULT_URL).rstrip("/"),
        token=pick(token, "STREAMJOBS_TOKEN") or "",
        ws_url=pick(ws_url, "STREAMJOBS_WS_URL"),
    )
