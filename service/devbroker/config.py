"""Broker properties for a local KRaft cluster: pure functions, no processes, no files read.

Every node runs in combined mode (``process.roles=broker,controller``) with a static voter
set, the form that works unchanged on Kafka 3.9 and 4.x. The values below trade durability
and throughput for a start in seconds and a small heap; see ``_FAST_START``.

Example::

    >>> nodes = plan_nodes(base_port=9092, brokers=1, controller_ports=[40001],
    ...                    data_dir=Path("/tmp/k"))
    >>> node_properties(nodes[0], nodes)["controller.quorum.voters"]
    '1@127.0.0.1:40001'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class NodeSpec:
    """One combined broker+controller node: its id, its two ports and its log directory."""

    node_id: int
    client_port: int
    controller_port: int
    log_dir: Path

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<client port>``: what clients connect to."""
        return f"{HOST}:{self.client_port}"


def plan_nodes(
    base_port: int, brokers: int, controller_ports: Sequence[int], data_dir: Path
) -> tuple[NodeSpec, ...]:
    """Nodes 1..brokers: client port ``base_port + i``, log dir ``data_dir/node-<id>``."""
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
    return tuple(
        NodeSpec(
            node_id=i + 1,
            client_port=base_port + i,
            controller_port=controller_ports[i],
            log_dir=data_dir.absolute() / f"node-{i + 1}",
        )
        for i in range(brokers)
    )


def voters(nodes: Sequence[NodeSpec]) -> str:
    """The static ``controller.quorum.voters`` value: ``1@127.0.0.1:C1,2@127.0.0.1:C2,...``."""
    return ",".join(f"{node.node_id}@{HOST}:{node.controller_port}" for node in nodes)


def node_properties(
    node: NodeSpec, nodes: Sequence[NodeSpec], overrides: Mapping[str, object] | None = None
) -> dict[str, str]:
    """All properties of ``node`` in a cluster of ``nodes``; ``overrides`` win over ours.

    Only the client listener is advertised: the controller endpoint falls back to its
    ``listeners`` entry, and advertising it too would make clients try to use it.
    """
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters(nodes),
        "listeners": f"PLAINTEXT://{HOST}:{node.client_port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.client_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.log_dir),
    }
    props.update(_FAST_START)
    props.update(_SINGLE if len(nodes) == 1 else _TRIPLE)
    props.update(normalise_overrides(overrides or {}))
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
