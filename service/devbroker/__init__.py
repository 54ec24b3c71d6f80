"""A real local Kafka (KRaft, from Maven Central jars) for development and tests.

Nothing here runs at import time; :class:`LocalCluster` starts JVMs only in ``start()``.
"""

from __future__ import annotations

from service.devbroker.cluster import LocalCluster
from service.devbroker.jars import ensure_jars
from service.devbroker.ports import free_port, free_port_block
from service.devbroker.version import DEFAULT_KAFKA_VERSION, KafkaVersion, resolve_version

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "KafkaVersion",
    "LocalCluster",
    "ensure_jars",
    "free_port",
    "free_port_block",
    "resolve_version",
]
