"""Every metric sluice exports, named in one place.

The registry is injected so tests use a fresh one. Hot-path cost: the engine resolves the
labelled children it needs once per partition assignment (``labels(...)`` is a dict lookup
plus a lock), and per fetched batch adds counts with one ``inc(n)``, never per event.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The worker's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.events_processed = Counter(
            "sluice_events_processed",
            "Events a job finished (effects handed to the producer), by job and source partition.",
            ["job", "topic", "partition"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "sluice_consumer_lag",
            "Log-end offset minus the consumer position, refreshed every few seconds.",
            ["topic", "partition"],
            registry=r,
        )
        self.committed_offset = Gauge(
            "sluice_committed_offset",
            "Offset last committed to the consumer group.",
            ["topic", "partition"],
            registry=r,
        )
        self.log_end_offset = Gauge(
            "sluice_log_end_offset",
            "Log-end (high watermark) offset of an assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.event_latency = Histogram(
            "sluice_event_latency_seconds",
            "Event timestamp to the moment its effects were handed to the producer.",
            ["job"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "sluice_processing_seconds",
            "Time spent in job code per fetched batch.",
            ["job"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commits = Counter("sluice_commits", "Offset commits to the consumer group.", registry=r)
        self.commit_seconds = Histogram(
            "sluice_commit_seconds",
            "Time from starting to flush effects to the commit being acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rebalances = Counter(
            "sluice_rebalances", "Partition assignments received from the group.", registry=r
        )
        self.assigned_partitions = Gauge(
            "sluice_assigned_partitions", "Partitions currently assigned to this worker.", registry=r
        )
        self.standby_partitions = Gauge(
            "sluice_standby_partitions",
            "Changelog partitions this worker keeps a standby copy of (SLUICE_STANDBY_REPLICAS).",
            registry=r,
        )
        self.dead_letters = Counter(
            "sluice_dead_letters",
            "Records sent to the dead-letter topic, by job and reason.",
            ["job", "reason"],
            registry=r,
        )
        self.duplicates_skipped = Counter(
            "sluice_duplicates_skipped",
            "Updates skipped because the row had already applied that source position.",
            ["table"],
            registry=r,
        )
        self.table_keys = Gauge(
            "sluice_table_keys",
            "Approximate number of keys in a table's local partitions (RocksDB estimate).",
            ["table"],
            registry=r,
        )
        self.late_events = Counter(
            "sluice_late_events",
            "Events whose window had already closed; counted in totals, not in windows.",
            ["job"],
            registry=r,
        )
        self.watermark = Gauge(
            "sluice_watermark_seconds",
            "Event-time watermark of a windows-table partition (unix seconds): windows ending, with "
            "their grace period, at or before it are closed.",
            ["table", "partition"],
            registry=r,
        )
        self.rate_limit_pauses = Counter(
            "sluice_rate_limit_pauses",
            "Times an input partition was paused because it reached SLUICE_MAX_RATE_PER_PARTITION.",
            ["topic", "partition"],
            registry=r,
        )
        self.restored_records = Counter(
            "sluice_restored_records",
            "Changelog records applied while restoring tables.",
            ["table"],
            registry=r,
        )
