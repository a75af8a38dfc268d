"""Kafka as a trust boundary: one principal per service and the least it needs on our topics.

`service_acls()` is the contract, derived from the channels each service declares that it
publishes and consumes (`services/<svc>/channels.py`). The local stack applies it through
Kafka's admin API, the compose setup script (`deploy/docker/kafka-setup.sh`) runs the same
grants with `kafka-acls.sh`, and `docs/security.md` prints it. Every service may describe every
streamjobs topic, so its start-up check (`ensure_topics`) sees them all and never needs to
create one: topics are created by the operator's admin principal.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Literal

from deploy.localstack.procs import StartupError
from shared.asyncapi import SERVICES
from shared.channels import ServiceChannels

ADMIN_USER = "admin"
SERVICE_PRINCIPALS = tuple(service.service for service in SERVICES)
# The doctor (`make doctor`) only looks: it lists and describes the topics.
DOCTOR_PRINCIPAL = "doctor"
SCRAM_MECHANISM = "SCRAM-SHA-512"

Resource = Literal["topic", "group", "transactional-id"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "describe"]


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW grant: `principal` may do `operation` on the named topic, group or
    transactional id."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation


def service_acls(
    prefix: str = "streamjobs",
    *,
    streamer_group: str | None = None,
    results_group: str | None = None,
) -> list[Acl]:
    """Every grant of the four services and the doctor for topics under `prefix`.

    Derived from the services' channel declarations: a service writes what it publishes and
    reads what it consumes. `streamer_group` and `results_group`, when given, replace the
    declared consumer group of that service (see `group_acl`).
    """
    groups = {"streamer": streamer_group, "results": results_group}
    acls = [
        Acl(p, "topic", f"{prefix}.", "prefixed", "describe")
        for p in (*SERVICE_PRINCIPALS, DOCTOR_PRINCIPAL)
    ]
    for service in SERVICES:
        principal = service.service
        acls += [
            Acl(principal, "topic", c.topic(prefix), "literal", "write") for c in service.publishes
        ]
        acls += [
            Acl(principal, "topic", c.topic(prefix), "literal", "read") for c in service.consumes
        ]
        group = group_acl(service, groups.get(principal))
        if group is not None:
            acls.append(group)
        # Groups named under the prefix (the gateways' admission group) are granted by name.
        acls += [
            Acl(principal, "group", c.group_of(prefix), "literal", "read")
            for c in service.consumers
            if c.group_of is not None
        ]
        if service.transactional_ids is not None:
            # A transactional producer describes its id (InitProducerId) and writes under it.
            acls += [
                Acl(
                    principal, "transactional-id", service.transactional_ids(prefix), "prefixed", op
                )
                for op in ("write", "describe")
            ]
    return sorted(acls)


def group_acl(service: ServiceChannels, name: str | None = None) -> Acl | None:
    """The read grant on the consumer groups of `service`, or None if it uses none.

    One group is granted by its name; several (the streamer's job and retry intakes use
    `<group>` and `<group>-retry`) by the prefix they share, the first one's name. `name`
    replaces that name.
    """
    declared = service.groups
    if not declared:
        return None
    first = declared[0]
    if any(not group.startswith(first) for group in declared):
        raise ValueError(f"the groups of {service.service} share no prefix: {declared}")
    pattern: Pattern = "literal" if len(declared) == 1 else "prefixed"
    return Acl(service.service, "group", name or first, pattern, "read")


def apply_acls(
    bootstrap: str, username: str, password: str, acls: list[Acl], *, timeout_s: float = 30.0
) -> None:
    """Create `acls` as the admin principal (idempotent: Kafka keeps one copy of a grant)."""
    try:
        # Typed loosely: the wheel's stubs do not export these names.
        ck: Any = importlib.import_module("confluent_kafka.admin")
        kafka_exception: type[Exception] = importlib.import_module("confluent_kafka").KafkaException
    except ImportError as exc:  # a dev dependency; `make install` brings it
        raise StartupError("creating Kafka ACLs needs confluent-kafka: run make install") from exc

    admin: Any = ck.AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": username,
            "sasl.password": password,
        }
    )
    resource_types = {
        "topic": ck.ResourceType.TOPIC,
        "group": ck.ResourceType.GROUP,
        "transactional-id": ck.ResourceType.TRANSACTIONAL_ID,
    }
    bindings = [
        ck.AclBinding(
            resource_types[acl.resource],
            acl.name,
            ck.ResourcePatternType.LITERAL
            if acl.pattern == "literal"
            else ck.ResourcePatternType.PREFIXED,
            f"User:{acl.principal}",
            "*",
            ck.AclOperation[acl.operation.upper()],
            ck.AclPermissionType.ALLOW,
        )
        for acl in acls
    ]
    everything = ck.AclBindingFilter(
        ck.ResourceType.ANY,
        None,
        ck.ResourcePatternType.ANY,
        None,
        None,
        ck.AclOperation.ANY,
        ck.AclPermissionType.ANY,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for future in admin.create_acls(bindings, request_timeout=10).values():
                future.result()
            # The controller has them; wait until the broker's authorizer does too, or a
            # client started right after this could still be refused.
            while not set(bindings) <= set(admin.describe_acls(everything).result()):
                if time.monotonic() > deadline:
                    raise StartupError(f"Kafka ACLs not in force after {timeout_s:g}s")
                time.sleep(0.05)
            return
        except kafka_exception as exc:  # the broker may still be starting: retry
            if time.monotonic() > deadline:
                raise StartupError(f"Kafka ACLs not created in {timeout_s:g}s: {exc}") from exc
            time.sleep(0.5)
