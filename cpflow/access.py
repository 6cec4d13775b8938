"""Who may do what on the broker: one principal per service and one for operators, derived from code.

Each service's principal may read exactly the topics its handlers subscribe to, write exactly the
topics it declares it publishes, and use only its own consumer group; the table is read from the
services' ``register`` functions (`shared.service.service_topics`), never restated. The operator
(the ``cpflow`` CLI) may submit runs (write ``run.requested``) and read every topic. The local
broker's users and ACLs (`cpflow.kafka_local`) and the Kubernetes KafkaUsers (``k8s/``) are both
made from `principals`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from shared.service import service_topics
from shared.settings import SERVICE_NAMES, Settings
from shared.topics import Topics

__all__ = ["DEFAULT_PREFIX", "OPERATOR", "Acl", "Principal", "acls", "principals", "username"]

OPERATOR = "operator"
DEFAULT_PREFIX = "cpflow"
"""The production topic prefix, whose users are plain ``cpflow-<role>``."""


@dataclass(frozen=True)
class Principal:
    """A Kafka user and what it may do.

    Attributes
    ----------
    name : `str`
        The role: a service name, or ``operator``.
    username : `str`
        The SCRAM user name (``cpflow-<role>``).
    reads : `tuple` [`str`, ...]
        Topics it may read.
    writes : `tuple` [`str`, ...]
        Topics it may write.
    group : `str` or `None`
        The one consumer group it may use (`None`: it reads without a group, as the CLI does).
    """

    name: str
    username: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    group: str | None


def username(role: str, settings: Settings) -> str:
    """The SCRAM user of ``role``: ``cpflow-<role>``, or ``cpflow-<prefix>-<role>`` for a sandbox's prefix.

    A sandbox (another topic prefix on the same broker) has users of its own, so its services get
    none of production's rights.
    """
    prefix = settings.topic_prefix or DEFAULT_PREFIX
    return f"cpflow-{role}" if prefix == DEFAULT_PREFIX else f"cpflow-{prefix}-{role}"


@dataclass(frozen=True, order=True)
class Acl:
    """One allow rule of a principal, as both brokers take it.

    Attributes
    ----------
    resource : `str`
        ``TOPIC`` or ``GROUP``.
    pattern : `str`
        ``LITERAL`` or ``PREFIXED`` (a table name ending in ``*``).
    name : `str`
        The topic or group name (the prefix, without ``*``).
    operation : `str`
        ``READ``, ``WRITE`` or ``DESCRIBE``.
    """

    resource: str
    pattern: str
    name: str
    operation: str


def acls(principal: Principal) -> list[Acl]:
    """Exactly what ``principal`` may do: read (and describe) its ``reads`` topics, write (and describe)
    its ``writes`` topics, read its own consumer group; nothing else (no create, no cluster rights)."""
    found: list[Acl] = []
    for operations, topics in (
        (("READ", "DESCRIBE"), principal.reads),
        (("WRITE", "DESCRIBE"), principal.writes),
    ):
        for topic in topics:
            pattern, name = ("PREFIXED", topic[:-1]) if topic.endswith("*") else ("LITERAL", topic)
            found.extend(Acl("TOPIC", pattern, name, op) for op in operations)
    if principal.group is not None:
        found.append(Acl("GROUP", "LITERAL", principal.group, "READ"))
    return found


def principals(settings: Settings | None = None) -> list[Principal]:
    """Every principal of a deployment with ``settings``' topic prefix, services first."""
    settings = settings or Settings(topic_prefix=DEFAULT_PREFIX)
    found: list[Principal] = []
    for name in SERVICE_NAMES:
        module = importlib.import_module(f"services.{name}.app")
        consumes, publishes = service_topics(name, module.register, settings)
        found.append(
            Principal(
                name=name,
                username=username(name, settings),
                reads=tuple(consumes),
                writes=tuple(publishes),
                group=settings.group_id(name),
            )
        )
    topics = Topics(settings.topic_prefix)
    found.append(
        Principal(
            name=OPERATOR,
            username=username(OPERATOR, settings),
            reads=tuple(topics.all()),
            writes=(topics.run_requested,),
            group=None,
        )
    )
    return found
