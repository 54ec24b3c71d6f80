"""Sensor readings: the rest of Faust's surface on ``service.App``, in one app.

``readings`` is keyed by sensor; a reading carries its event time in a float field (``ts``,
epoch seconds) and negative values are sensor errors, which the agents filter out.

* ``count_readings`` (``concurrency=2``) counts each sensor's readings in ``reading_counts``;
* ``total_readings`` (``concurrency=2``, what concurrency is for: an I/O call per reading, whose
  latency varies) adds each sensor's values up in ``sensor_totals``;
* ``window_readings`` adds each reading's value to ``sensor_hops``, a hopping window of event
  time (``relative_to_field(Reading.ts)``), reads the reading's window back with ``.value()``
  and the window one step earlier with ``.delta()``, and yields the result to its sink,
  ``accepted``;
* ``summarize`` reads every reading (errors too) in ``stream.take()`` lists and sends one
  summary per list to ``batches``;
* a timer sends a tick to ``ticks`` (a send outside any agent); a nightly crontab logs;
* ``/sensors/{sensor}/`` answers a sensor's count and its window at ``?at=<epoch s>``, routed
  with ``topic_route`` to the worker that reads the sensor's partition;
* ``faust -A tests.apps.surface topics`` prints the topics the app reads and writes.
"""

import asyncio
import logging
import os
import time
from datetime import timedelta

import faust

import service

log = logging.getLogger(__name__)

WINDOW_SIZE = 15.0
WINDOW_STEP = 5.0
"""Every reading lands in WINDOW_SIZE / WINDOW_STEP = 3 windows."""

BATCH_MAX = 40
BATCH_WITHIN = timedelta(seconds=1)
TICK_INTERVAL = 0.5


class Reading(faust.Record, serializer="json"):
    sensor: str
    value: int
    ts: float


class Accepted(faust.Record, serializer="json"):
    sensor: str
    value: int
    ts: float
    window_total: int
    """The sum of the sensor's values in the latest window holding ``ts``, this reading included."""
    earlier_total: int
    """The same for the window one step earlier (it holds ``ts`` too). Faust's ``.delta()`` counts
    from the record's timestamp, not the field: producers here stamp records with ``ts``."""


class BatchSummary(faust.Record, serializer="json"):
    count: int
    total: int


class Tick(faust.Record, serializer="json"):
    at: float


app = service.App(os.environ.get("SURFACE_APP_ID", "surface"))
readings_topic = app.topic(os.environ.get("SURFACE_TOPIC", "readings"), key_type=str, value_type=Reading)
accepted_topic = app.topic(os.environ.get("SURFACE_SINK_TOPIC", "accepted"), value_type=Accepted)
batches_topic = app.topic(os.environ.get("SURFACE_BATCHES_TOPIC", "batches"), value_type=BatchSummary)
ticks_topic = app.topic(os.environ.get("SURFACE_TICKS_TOPIC", "ticks"), value_type=Tick)

reading_counts = app.Table("reading_counts", default=int)
sensor_totals = app.Table("sensor_totals", default=int)
sensor_hops = (
    app.Table("sensor_hops", default=int)
    .hopping(WINDOW_SIZE, WINDOW_STEP, expires=timedelta(hours=1))
    .relative_to_field(Reading.ts)
)


def valid(reading):
    return reading.value >= 0


@app.agent(readings_topic, concurrency=2)
async def count_readings(readings):
    async for reading in readings.filter(valid):
        reading_counts[reading.sensor] += 1


async def calibrate(reading):
    """Stands for a call to another service (a calibration lookup) taking 0-4 ms."""
    await asyncio.sleep((reading.value % 5) / 1000)
    return reading.value


@app.agent(readings_topic, concurrency=2)
async def total_readings(readings):
    async for reading in readings.filter(valid):
        value = await calibrate(reading)
        sensor_totals[reading.sensor] += value


@app.agent(readings_topic, sink=[accepted_topic])
async def window_readings(readings):
    async for reading in readings.filter(valid):
        sensor_hops[reading.sensor] += reading.value
        window = sensor_hops[reading.sensor]
        yield Accepted(
            sensor=reading.sensor,
            value=reading.value,
            ts=reading.ts,
            window_total=window.value(),
            earlier_total=window.delta(WINDOW_STEP),
        )


@app.agent(readings_topic)
async def summarize(readings):
    async for batch in readings.take(BATCH_MAX, within=BATCH_WITHIN):
        await batches_topic.send(
            value=BatchSummary(count=len(batch), total=sum(reading.value for reading in batch))
        )


@app.timer(interval=TICK_INTERVAL)
async def tick():
    await ticks_topic.send(value=Tick(at=time.time()))


@app.crontab("0 3 * * *")
async def nightly():
    log.info("nightly: %d sensors counted here", len(reading_counts))


@app.page("/sensors/{sensor}/")
@app.topic_route(topic=readings_topic, match_info="sensor")
async def sensor_stats(web, request, sensor):
    # No event here: the window is chosen relative to ``at`` (Faust refuses .value() relative to a
    # field, and .delta(), outside a stream).
    at = float(request.query.get("at", time.time()))
    return web.json(
        {
            "sensor": sensor,
            "count": reading_counts[sensor],
            "window": sensor_hops.relative_to(at)[sensor].value(),
        }
    )


@app.command()
async def topics():
    """Print the topics this app reads and writes."""
    print(f"reads: {readings_topic.get_topic_name()}")
    for topic in (accepted_topic, batches_topic, ticks_topic):
        print(f"writes: {topic.get_topic_name()}")


if __name__ == "__main__":
    app.main()
