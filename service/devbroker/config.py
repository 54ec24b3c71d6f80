"""Broker properties for a local KRaft cluster: pure functions, no processes, no files read.

Every node runs in combined mode (``process.roles=broker,controller``) with a static voter
set, the form that works unchanged on Kafka 3.9 and 4.x. The values below trade durability
and throughput for a start in seconds and a small heap; see ``_FAST_START``.

With a :class:`ClientSecurity` that asks for TLS and/or SASL/SCRAM, only the client listener
changes protocol: brokers replicate and talk to the controller over a separate PLAINTEXT
listener on 127.0.0.1 (``INTERNAL``), so a certificate or SCRAM mistake can only break clients,
which is exactly what a developer testing a secured client wants to see.

Example::

    >>> nodes = plan_nodes(base_port=9092, brokers=1, controller_ports=[40001],
    ...                    data_dir=Path("/tmp/k"))
    >>> node_properties(nodes[0], nodes)["controller.quorum.voters"]
    '1@127.0.0.1:40001'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.devbroker.ports import HOST
from service.errors import ConfigError

SUPPORTED_SIZES = (1, 3)

# Settings that make a test broker start fast and stay small (defaults in comments):
_FAST_START: dict[str, str] = {
    "num.partitions": "1",
    "offsets.topic.num.partitions": "5",  # 50: all created on the first group join
    "transaction.state.log.num.partitions": "5",  # 50
    "group.initial.rebalance.delay.ms": "0",  # 3000: every first join waited 3 s
    "num.network.threads": "2",  # 3
    "num.io.threads": "2",  # 8
    "background.threads": "2",  # 10
    "log.cleaner.dedupe.buffer.size": "2097152",  # 128 MiB, heap-allocated at start
    "log.segment.bytes": "16777216",  # 1 GiB; only matters to retention tests
    "delete.topic.enable": "true",
}

# Replication for a single node: nothing can be replicated, so internal topics use RF 1.
_SINGLE: dict[str, str] = {
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",  # 4.x only; 3.9 ignores it
    "share.coordinator.state.topic.min.isr": "1",
}

# Three nodes: RF 3 with min ISR 2, so acks=all survives one lost node; a killed broker is
# fenced after 3 s instead of 9 s; no leader moves behind a fault test's back after a restart.
_TRIPLE: dict[str, str] = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    "auto.leader.rebalance.enable": "false",
}

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Mechanisms offered on a SCRAM client listener; the user is created for both at format time.
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def security_protocol(*, tls: bool, sasl_scram: bool) -> str:
    """Kafka's protocol name for a listener with or without TLS and SASL, e.g. ``SASL_SSL``."""
    if tls:
        return "SASL_SSL" if sasl_scram else "SSL"
    return "SASL_PLAINTEXT" if sasl_scram else "PLAINTEXT"


@dataclass(frozen=True)
class ClientSecurity:
    """What the client listener speaks: TLS, SASL/SCRAM, both, or neither (PLAINTEXT).

    ``keystore``/``truststore`` are PKCS12 files protected by ``store_password``; they are
    required when ``tls`` is set. The SCRAM *users* are not here: they live in the metadata
    log, written at format time (see ``cluster.LocalCluster._format``).
    """

    tls: bool = False
    sasl_scram: bool = False
    keystore: Path | None = None
    truststore: Path | None = None
    store_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.tls and (self.keystore is None or self.truststore is None or not self.store_password):
            raise ConfigError("a TLS listener needs a keystore, a truststore and their password")

    @property
    def protocol(self) -> str:
        """Kafka's name of the client listener's security protocol, e.g. ``SASL_SSL``."""
        return security_protocol(tls=self.tls, sasl_scram=self.sasl_scram)

    @property
    def secured(self) -> bool:
        """True when the client listener is anything but PLAINTEXT."""
        return self.tls or self.sasl_scram


@dataclass(frozen=True)
class NodeSpec:
    """One combined broker+controller node: its id, its ports and its log directory.

    ``internal_port`` is the PLAINTEXT inter-broker listener of a cluster whose client
    listener is secured; None when clients and brokers share the PLAINTEXT client port.
    """

    node_id: int
    client_port: int
    controller_port: int
    log_dir: Path
    internal_port: int | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<client port>``: what clients connect to."""
        return f"{HOST}:{self.client_port}"


def plan_nodes(
    base_port: int,
    brokers: int,
    controller_ports: Sequence[int],
    data_dir: Path,
    internal_ports: Sequence[int] | None = None,
) -> tuple[NodeSpec, ...]:
    """Nodes 1..brokers: client port ``base_port + i``, log dir ``data_dir/node-<id>``.

    ``internal_ports`` (one per node) are given only for a cluster with a secured client
    listener; every port of the plan must be distinct.
    """
    if brokers not in SUPPORTED_SIZES:
        raise ConfigError(f"a local cluster has 1 or 3 brokers, not {brokers}")
    if not 1024 <= base_port <= 65535 - (brokers - 1):
        raise ConfigError(f"base port {base_port} is out of range 1024-{65535 - (brokers - 1)}")
    if len(controller_ports) != brokers:
        raise ConfigError(f"need {brokers} controller ports, got {len(controller_ports)}")
    client_ports = {base_port + i for i in range(brokers)}
    if len(set(controller_ports)) != brokers or client_ports & set(controller_ports):
        raise ConfigError(
            f"controller ports {list(controller_ports)} must be distinct and differ from "
            f"client ports {sorted(client_ports)}"
        )
    if internal_ports is not None:
        taken = client_ports | set(controller_ports)
        distinct = set(internal_ports)
        if len(internal_ports) != brokers or len(distinct) != brokers or taken & distinct:
            raise ConfigError(
                f"internal ports {list(internal_ports)} must be one per node, distinct, and differ "
                f"from client ports {sorted(client_ports)} and controller ports {list(controller_ports)}"
            )
    return tuple(
        NodeSpec(
            node_id=i + 1,
            client_port=base_port + i,
            controller_port=controller_ports[i],
            log_dir=data_dir.absolute() / f"node-{i + 1}",
            internal_port=internal_ports[i] if internal_ports is not None else None,
        )
        for i in range(brokers)
    )


def voters(nodes: Sequence[NodeSpec]) -> str:
    """The static ``controller.quorum.voters`` value: ``1@127.0.0.1:C1,2@127.0.0.1:C2,...``."""
    return ",".join(f"{node.node_id}@{HOST}:{node.controller_port}" for node in nodes)


def node_properties(
    node: NodeSpec,
    nodes: Sequence[NodeSpec],
    overrides: Mapping[str, object] | None = None,
    security: ClientSecurity | None = None,
) -> dict[str, str]:
    """All properties of ``node`` in a cluster of ``nodes``; ``overrides`` win over ours.

    Only the broker listeners are advertised: the controller endpoint falls back to its
    ``listeners`` entry, and advertising it too would make clients try to use it. A client
    only ever sees the endpoints of the listener it connected to, so advertising ``INTERNAL``
    (needed for replication) does not lead secured clients to the PLAINTEXT port.
    """
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters(nodes),
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(node.log_dir),
    }
    if security is None or not security.secured:
        props.update(
            {
                "listeners": f"PLAINTEXT://{HOST}:{node.client_port},CONTROLLER://{HOST}:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{node.client_port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        )
    else:
        props.update(_secured_listeners(node, security))
    props.update(_FAST_START)
    props.update(_SINGLE if len(nodes) == 1 else _TRIPLE)
    props.update(normalise_overrides(overrides or {}))
    return props


def _secured_listeners(node: NodeSpec, security: ClientSecurity) -> dict[str, str]:
    """Listener properties for a TLS and/or SCRAM client port plus a PLAINTEXT internal port.

    Everything security-related is prefixed ``listener.name.client.``, so it applies to the
    client listener only and the internal and controller listeners stay PLAINTEXT.
    """
    if node.internal_port is None:
        raise ConfigError(f"node {node.node_id} needs an internal port when clients use {security.protocol}")
    client = f"{HOST}:{node.client_port}"
    internal = f"{HOST}:{node.internal_port}"
    props = {
        "listeners": f"CLIENT://{client},INTERNAL://{internal},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"CLIENT://{client},INTERNAL://{internal}",
        "inter.broker.listener.name": "INTERNAL",
        "listener.security.protocol.map": (
            f"CLIENT:{security.protocol},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
    }
    prefix = "listener.name.client."
    if security.tls:
        assert security.keystore is not None and security.truststore is not None
        assert security.store_password is not None
        props.update(
            {
                prefix + "ssl.keystore.type": "PKCS12",
                prefix + "ssl.keystore.location": str(security.keystore),
                prefix + "ssl.keystore.password": security.store_password,
                prefix + "ssl.key.password": security.store_password,
                prefix + "ssl.truststore.type": "PKCS12",
                prefix + "ssl.truststore.location": str(security.truststore),
                prefix + "ssl.truststore.password": security.store_password,
                prefix + "ssl.client.auth": "none",
            }
        )
    if security.sasl_scram:
        props[prefix + "sasl.enabled.mechanisms"] = ",".join(SCRAM_MECHANISMS)
        for mechanism in SCRAM_MECHANISMS:
            props[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = _SCRAM_LOGIN
    return props


def normalise_overrides(overrides: Mapping[str, object]) -> dict[str, str]:
    """Check override keys and turn values into property strings (``True`` -> ``"true"``)."""
    result: dict[str, str] = {}
    for key, value in overrides.items():
        if not _KEY_RE.match(key):
            raise ConfigError(f"broker property name {key!r} is not a plain dotted name")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError(f"broker property {key} must be on one line")
        result[key] = text
    return result


def render(props: Mapping[str, str]) -> str:
    """A ``.properties`` file, keys sorted; backslashes escaped as java.util.Properties needs."""
    lines = [f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in sorted(props.items())]
    return "\n".join(lines) + "\n"
