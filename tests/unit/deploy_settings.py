"""What a deployment may say to a service: the environment names its settings class reads
and the port settings it listens on. The compose and Helm tests check their files with it."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.gateway.settings import GatewaySettings
from services.notifier.settings import NotifierSettings
from services.results.settings import ResultsSettings
from services.streamer.settings import StreamerSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "streamer": StreamerSettings,
    "results": ResultsSettings,
    "notifier": NotifierSettings,
}

# The settings that name a port each service listens on.
PORT_SETTINGS: dict[str, tuple[str, ...]] = {
    "gateway": ("GATEWAY_PORT",),
    "streamer": ("STREAMER_PORT",),
    "results": ("RESULTS_PORT",),
    "notifier": ("NOTIFIER_PORT", "NOTIFIER_SSE_PORT"),
}
# The port of /healthz and /readyz.
OPS_PORT_SETTING = {name: ports[0] for name, ports in PORT_SETTINGS.items()}


def env_names(service: str) -> set[str]:
    """Every environment name (upper case) the service's settings read, as pydantic-settings
    matches them: the env prefix plus the field name, or each validation alias."""
    cls = SETTINGS[service]
    prefix = str(cls.model_config.get("env_prefix", ""))
    assert not cls.model_config.get("case_sensitive"), "names are compared case-insensitively"
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(prefix + field_name)
    return {name.upper() for name in names}


def unknown_env_names(service: str, env: dict[str, str]) -> set[str]:
    """The names in `env` that no setting of the service reads (typos, another service's)."""
    return {name for name in env if name.upper() not in env_names(service)}


def listen_ports(service: str, env: dict[str, str]) -> dict[str, int]:
    """Each port setting of the service: the value `env` gives it, else its default."""
    fields = SETTINGS[service].model_fields
    ports: dict[str, int] = {}
    for setting in PORT_SETTINGS[service]:
        given = {k.upper(): v for k, v in env.items()}.get(setting)
        default = fields[setting.lower()].default
        ports[setting] = int(given) if given is not None else int(default)
    return ports
