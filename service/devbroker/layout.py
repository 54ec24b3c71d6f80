"""Where a local cluster keeps its files, and what it remembers between runs of one data dir.

    D/cluster.json          cluster id, size, Kafka version and controller ports of D
    D/<log config>          log4j.properties (3.9) or log4j2.properties (4.x)
    D/node-<id>.properties  the node's broker properties
    D/node-<id>/            the node's log.dirs (formatted by StorageTool)
    D/node-<id>.pid         pid of the node's running JVM
    D/node-<id>.log         the node's stdout and stderr: WARN+, "Kafka Server started", crashes

A data dir is reused only by a cluster of the same size and Kafka version, with the cluster
id it was formatted with: anything else would fail later inside Kafka with a less clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from service.errors import ConfigError

STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class ClusterState:
    """What ``D/cluster.json`` records about the cluster that formatted ``D``."""

    cluster_id: str
    brokers: int
    kafka_version: str
    controller_ports: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """File paths of a local cluster rooted at ``data_dir``."""

    data_dir: Path

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def properties(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.properties"

    def pid_file(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.pid"

    def log_file(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.log"

    def read_state(self) -> ClusterState | None:
        """The recorded state, or None for a fresh directory."""
        path = self.data_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return ClusterState(
                cluster_id=str(raw["cluster_id"]),
                brokers=int(raw["brokers"]),
                kafka_version=str(raw["kafka_version"]),
                controller_ports=tuple(int(port) for port in raw["controller_ports"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); use another data dir") from exc

    def write_state(self, state: ClusterState) -> None:
        (self.data_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")

    def check_reusable(self, state: ClusterState, brokers: int, kafka_version: str) -> None:
        """Refuse a data dir made by a cluster of another size or Kafka version."""
        if state.brokers != brokers or state.kafka_version != kafka_version:
            raise ConfigError(
                f"data dir {self.data_dir} holds a {state.brokers}-broker Kafka "
                f"{state.kafka_version} cluster, not {brokers}-broker Kafka {kafka_version}: "
                "use another data dir"
            )
