"""Shared fixtures: the real-Kafka fixtures live in tests/kafka_fixtures.py.

``tests/`` is also put on sys.path, so that both ``from tests.kafka_fixtures import free_port``
and ``from kafka_fixtures import free_port`` work in test modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.kafka_fixtures import (  # noqa: F401  (fixtures are found by name)
    _kafka_session_factory,
    kafka,
    kafka_cluster3,
    kafka_cluster_factory,
)

_TESTS_DIR = str(Path(__file__).resolve().parent)


def pytest_configure(config: object) -> None:
    """Make ``import kafka_fixtures`` work without making every test module compute paths."""
    if _TESTS_DIR not in sys.path:
        sys.path.append(_TESTS_DIR)
