"""pytest fixtures that run real Kafka brokers (see service.devbroker), and ``free_port``.

    kafka                  session: one single-node cluster, started by the first test that asks
    kafka_cluster3         module: a 3-node cluster (RF 3, min ISR 2) for tests that kill nodes;
                           a test module may set ``KAFKA_OVERRIDES = {...}`` (broker properties)
    kafka_cluster_factory  module: ``factory(brokers=1|3, overrides={...})`` -> a started cluster
                           of one's own, e.g. with ``offsets.retention.minutes`` for a fault test
    kafka_secure           module: a single node whose client port is SASL_SSL (SCRAM-SHA-512/256,
                           CA in its data dir); ``.client_env`` holds the SLUICE_* a client needs

Each yields a started :class:`LocalCluster`; tests use ``.bootstrap_servers``, and fault tests
``.kill_node(id)`` / ``.start_node(id)``. Nothing starts until a test requests a fixture, so unit
tests never start a JVM.

Clean-up, because a JVM left behind would hold ports and CPU for the rest of the machine's life:
fixture finalizers stop every node and remove its directory; an ``atexit`` hook does the same if
pytest dies past them; SIGTERM to pytest becomes KeyboardInterrupt so that both run; and if the
Python process is killed outright, the kernel kills the JVMs (PR_SET_PDEATHSIG, see jvm.py).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

import pytest

from service.devbroker import LocalCluster
from service.devbroker.ports import free_port, free_port_block
from service.errors import ConfigError, OperationError

__all__ = ["free_port", "free_port_block", "kafka", "kafka_cluster3", "kafka_cluster_factory", "kafka_secure"]

_START_ATTEMPTS = 3
_PORT_CLASH = ("Address already in use", "BindException", "is in use")


class ClusterFactory:
    """Starts clusters in directories under pytest's tmp path and stops all of them on close."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
        self._tmp = tmp_path_factory
        self._name = name
        self._clusters: list[LocalCluster] = []
        self._dirs: list[Path] = []
        atexit.register(self.close)

    def __call__(
        self,
        brokers: int = 1,
        overrides: Mapping[str, object] | None = None,
        *,
        tls: bool = False,
        sasl_scram: bool = False,
    ) -> LocalCluster:
        """A started cluster on free ports; retried on new ports if another process took one."""
        _stop_on_sigterm()
        for attempt in range(1, _START_ATTEMPTS + 1):
            data_dir = self._tmp.mktemp(f"{self._name}-{brokers}n", numbered=True)
            self._dirs.append(data_dir)
            cluster = LocalCluster(
                base_port=free_port_block(brokers),
                brokers=brokers,
                data_dir=data_dir,
                overrides=overrides,
                tls=tls,
                sasl_scram=sasl_scram,
            )
            self._clusters.append(cluster)
            try:
                cluster.start()
            except (ConfigError, OperationError) as exc:
                if attempt == _START_ATTEMPTS or not any(text in str(exc) for text in _PORT_CLASH):
                    raise
                continue
            return cluster
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop every cluster and remove every directory; safe to call twice."""
        atexit.unregister(self.close)
        while self._clusters:
            self._clusters.pop().stop()
        while self._dirs:
            shutil.rmtree(self._dirs.pop(), ignore_errors=True)


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so finalizers and atexit hooks run before exit.

    Only when SIGTERM still has its default action (which would skip both), and only from the
    main thread, where signal handlers can be set.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def _kafka_session_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path_factory, "kafka")
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def kafka(_kafka_session_factory: ClusterFactory) -> LocalCluster:
    """A single-node Kafka for the whole session (RF 1); topics from other tests stay around."""
    return _kafka_session_factory(brokers=1)


@pytest.fixture(scope="module")
def kafka_cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """``factory(brokers=1|3, overrides={...})``: clusters of one's own, stopped after the module."""
    factory = ClusterFactory(tmp_path_factory, "kafka-custom")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def kafka_cluster3(request: pytest.FixtureRequest, kafka_cluster_factory: ClusterFactory) -> LocalCluster:
    """A 3-node cluster for one test module; nodes killed by a test are not restarted for the next."""
    overrides = getattr(request.module, "KAFKA_OVERRIDES", None)
    return kafka_cluster_factory(brokers=3, overrides=overrides)


@pytest.fixture(scope="module")
def kafka_secure(kafka_cluster_factory: ClusterFactory) -> LocalCluster:
    """A single node for one test module whose clients must use SASL_SSL with SCRAM (user ``sluice``).

    Module-scoped rather than session-scoped: only the security tests need it, and a JVM of its
    own would otherwise run (and take a core's share) for the whole session.
    """
    return kafka_cluster_factory(brokers=1, tls=True, sasl_scram=True)
