"""Moving a stock Faust deployment to sluice (issue 15), against the real broker.

``tests/apps/orders.py`` runs first on stock ``faust.App`` (``ORDERS_ON_STOCK_FAUST=1``: an
in-memory store, its changelog holding bare values) through part of the input, until its group
has committed everything it read; it is stopped. Then the same file on ``service.App``, same
app id: it takes the consumer group, the agent topic and the changelog as stock Faust named and
left them — the bare values as the table's starting state — and works through the rest. The
totals equal the sum of every order's amount per customer.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from tables.codec import is_sluice_row
from tests.fault.test_faust_apps import (
    FAUST_A,
    UNPACED,
    Deployment,
    backlog,
    check_exact,
    local_table,
    no_dead_letters,
    stop,
)
from tests.harness import produce_records, read_records, wait_caught_up, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@pytest.fixture
def d(kafka: Any, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(
        kafka.bootstrap_servers, tmp_path, "orders", SLUICE_MAX_RATE_PER_PARTITION=UNPACED
    )
    try:
        yield deployment
    finally:
        deployment.stop_all()


def committed(d: Deployment) -> int:
    try:
        return d.committed(d.input)
    except KafkaError:  # the group does not exist yet
        return 0


def orders_of(seed: int, start: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"order_id": f"o-{i}", "customer": f"customer-{rng.randrange(40)}", "amount": rng.randint(1, 500)}
        for i in range(start, start + n)
    ]


def test_a_stock_faust_deployment_moves_to_service_app_with_its_state(d: Deployment) -> None:
    before, after = orders_of(1, 0, 400), orders_of(2, 400, 600)
    backlog(d.bootstrap, d.input, ((None, None, json.dumps(o).encode()) for o in before))
    truth: Counter[str] = Counter()
    for o in before + after:
        truth[json.dumps(o["customer"])] += o["amount"]
    command = [*FAUST_A, "tests.apps.orders"]

    stock = d.worker(command, "stock", "stock", ORDERS_ON_STOCK_FAUST="1")
    wait_until(lambda: committed(d) >= len(before), 180, "stock Faust read the input", [stock])
    sources = [d.input, f"{d.app_id}-tests.apps.orders.count_agent"]
    wait_caught_up(d.bootstrap, d.app_id, sources, 180)  # and what its agents sent each other
    stock.kill(signal.SIGTERM)
    stock.wait(60)
    changelog = asyncio.run(read_records(d.bootstrap, f"{d.app_id}-customer_totals-changelog"))
    assert changelog and not any(is_sluice_row(r.value or b"") for r in changelog), "stock Faust's rows"

    asyncio.run(produce_records(d.bootstrap, d.input, [(None, None, json.dumps(o).encode()) for o in after]))
    moved = d.worker(command, "sluice", "sluice")
    moved.wait_ready(90)
    wait_caught_up(d.bootstrap, d.app_id, sources, 180)
    stop(moved)

    no_dead_letters(d)
    check_exact(dict(truth), d.table("customer_totals"), "changelog customer_totals")
    check_exact(dict(truth), local_table(moved.data_dir, "customer_totals"), "RocksDB")
