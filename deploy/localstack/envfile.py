"""`.state/stack.env`: what a shell needs to talk to the running stack or fleet (base URL,
tokens, brokers, database), written by `up` and `fleet`, sourced by `make demo`, `make token`,
`make doctor` and people."""

from __future__ import annotations

import tempfile
from pathlib import Path

from deploy.localstack.fleet import Fleet
from deploy.localstack.stack import Stack
from shared.auth import SCOPE_ADMIN, issue_token

# What the fleet's services share that a shell may want too; the per-instance settings
# (NOTIFIER_INSTANCES, GATEWAY_NOTIFIER_WS_URLS, ...) stay out, or a `make run` in a shell
# that sourced this file would hand them to its one instance of each service.
FLEET_SHELL_SETTINGS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "DATABASE_URL",
    "OPENAI_BASE_URL",
    "STREAMJOBS_AUTH_SECRET",
    "TOPIC_PREFIX",
    "JOB_PARTITIONS",
)


def tokens(secret: str) -> dict[str, str]:
    return {
        "STREAMJOBS_TOKEN": issue_token(secret, "demo"),
        "STREAMJOBS_ADMIN_TOKEN": issue_token(
            secret, "ops", ["jobs:read", "jobs:write", SCOPE_ADMIN]
        ),
    }


def stack_env(stack: Stack) -> dict[str, str]:
    urls = stack.urls()
    return {
        "STREAMJOBS_URL": urls["gateway"],
        "STREAMJOBS_WS_URL": urls["notifier_ws"],
        **tokens(stack.auth_secret()),
        **{k: v for k, v in stack.service_env().items() if k != "PYTHONUNBUFFERED"},
        # A shell (and `make doctor`) may look at the topics, nothing more.
        **stack.kafka_credentials("doctor"),
    }


def fleet_env(fleet: Fleet) -> dict[str, str]:
    """The first gateway as the base URL, every broker, and each role's instance URLs."""
    urls = fleet.fleet_urls()
    common = fleet.common_env()
    return {
        "STREAMJOBS_URL": fleet.url("gateway", 0),
        "STREAMJOBS_WS_URL": fleet.ws_url(0),
        **tokens(fleet.auth_secret()),
        "STREAMJOBS_GATEWAY_URLS": urls["gateway"],
        "STREAMJOBS_RESULTS_URLS": urls["results"],
        "STREAMJOBS_STREAMER_URLS": urls["streamer"],
        "STREAMJOBS_NOTIFIER_WS_URLS": urls["notifier_ws"],
        "STREAMJOBS_NOTIFIER_SSE_URLS": urls["notifier_sse"],
        "STREAMJOBS_FLEET_MANIFEST": str(fleet.manifest_path),
        **{k: common[k] for k in FLEET_SHELL_SETTINGS},
    }


def write(path: Path, lines: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # holds tokens and the signing secret
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in lines.items()))
    return path


def write_env(stack: Stack) -> Path:
    return write(stack.state_dir.parent / "stack.env", stack_env(stack))


def write_fleet_env(fleet: Fleet) -> Path:
    return write(fleet.state_dir.parent / "stack.env", fleet_env(fleet))


def exported_names() -> set[str]:
    """Every name a stack.env may export: of the stack (PLAINTEXT and SASL) and of the fleet.

    Built from the same functions that write the file, on throwaway state, so the list never
    falls behind them."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names: set[str] = set()
        for security in ("plaintext", "sasl"):
            stack = Stack(root / security, root / "cache", kafka_security=security)
            names |= stack_env(stack).keys()
        names |= fleet_env(Fleet(root / "fleet", root / "cache")).keys()
    return names
