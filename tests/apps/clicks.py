"""Clicks per user and minute: ``group_by`` a Record field into a tumbling windowed table.

The ``clicks`` topic is not keyed by user; ``count_clicks`` repartitions it by ``Click.user``,
counts each user's clicks per one-minute window of event time (the stream's timestamps) and
sends each click's running count of its window, read with ``.current()``, to ``click-counts``.
"""

import os
from datetime import timedelta

import faust

import service


class Click(faust.Record, serializer="json"):
    user: str
    url: str


class ClickCount(faust.Record, serializer="json"):
    user: str
    url: str
    count: int


app = service.App(os.environ.get("CLICKS_APP_ID", "clicks"))
clicks_topic = app.topic(os.environ.get("CLICKS_TOPIC", "clicks"), value_type=Click)
counts_topic = app.topic(os.environ.get("CLICKS_OUTPUT_TOPIC", "click-counts"), value_type=ClickCount)

user_clicks = (
    app.Table("user_clicks", default=int)
    .tumbling(timedelta(minutes=1), expires=timedelta(hours=1))
    .relative_to_stream()
)


@app.agent(clicks_topic)
async def count_clicks(clicks):
    async for click in clicks.group_by(Click.user):
        user_clicks[click.user] += 1
        count = user_clicks[click.user].current()
        await counts_topic.send(key=click.user, value=ClickCount(user=click.user, url=click.url, count=count))


if __name__ == "__main__":
    app.main()
