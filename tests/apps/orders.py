"""Orders: an agent forwards each order's amount to a second agent, which keeps totals.

Faust's agent-to-agent ``send``: ``process_order`` reads the ``orders`` topic and sends
``(customer, amount)`` to ``count_agent``, an agent declared without a channel (it reads a topic
of its own, ``<app id>-<agent name>``, with ``str`` keys and ``int`` values), which adds the
amounts up per customer in a table.
"""

import os

import faust

import service


class Order(faust.Record, serializer="json"):
    order_id: str
    customer: str
    amount: int


if os.environ.get("ORDERS_ON_STOCK_FAUST"):  # the app before the move (the migration test)
    app = faust.App(
        os.environ.get("ORDERS_APP_ID", "orders"),
        broker="kafka://" + os.environ["SLUICE_BROKERS"],
        store="memory://",
        topic_partitions=int(os.environ.get("SLUICE_TOPIC_PARTITIONS", "4")),
        datadir=os.environ["SLUICE_DATA_DIR"],
    )
else:
    app = service.App(os.environ.get("ORDERS_APP_ID", "orders"))
orders_topic = app.topic(os.environ.get("ORDERS_TOPIC", "orders"), value_type=Order)
customer_totals = app.Table("customer_totals", default=int)


@app.agent(key_type=str, value_type=int)
async def count_agent(amounts):
    async for customer, amount in amounts.items():
        customer_totals[customer] += amount


@app.agent(orders_topic)
async def process_order(orders):
    async for order in orders:
        await count_agent.send(key=order.customer, value=order.amount)


if __name__ == "__main__":
    app.main()
