"""``service.App``: a ``faust.App`` whose data plane is sluice's engine.

A Faust app moves to sluice by constructing ``service.App`` instead of ``faust.App``; agents,
topics, tables, windowed tables, pages, timers, tasks and commands are written as in Faust. The
differences are underneath and deliberate:

* Faust's consumer, conductor, per-message ack bookkeeping, producer buffer, table manager,
  RocksDB store and exactly-once path are not started (:class:`BootStrategy`); the engine
  (:mod:`service.engine`) fetches, runs the agents (:mod:`service.app.dataplane`), makes every
  effect durable and only then commits — the traps listed in faust-internals.md cannot happen.
* Tables are offset-guarded (:mod:`service.app.table`): a replayed event changes nothing.
* Settings: every ``SLUICE_*`` variable applies; arguments given to ``App(...)`` (``broker``,
  ``datadir``, ``web_port``, ``topic_partitions``, ``processing_guarantee`` …) and the ``faust``
  command's flags win over them.

Faust features sluice does not carry fail here, at definition, with one line naming what to use
instead (global and set tables, isolated partitions, joins, ``stream.through``, request/reply).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy as FaustBootStrategy
from faust.exceptions import ImproperlyConfigured
from mode import ServiceT

from service.app.dataplane import DataPlane
from service.app.web import add_views
from service.logs import logging_config
from service.metrics import Metrics
from service.settings import Settings, load_settings

_CLASSES = {
    "Agent": "service.app.agent:SluiceAgent",
    "Stream": "service.app.stream:SluiceStream",
    "Table": "service.app.table:SluiceTable",
    "Topic": "service.app.topic:SluiceTopic",
    "Router": "service.app.router:SluiceRouter",
}

UNSUPPORTED_OPTIONS = {
    "store": None,  # accepted and ignored: tables are always RocksDB + changelog
}


def sluice_overrides(app_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``App(...)`` arguments that name a sluice setting, as setting values (they win over the
    environment)."""
    out: dict[str, Any] = {}
    if app_id:
        out["app_id"] = app_id
    broker = options.get("broker")
    if broker:
        urls = broker if isinstance(broker, (list, tuple)) else str(broker).replace(";", ",").split(",")
        out["brokers"] = tuple(str(u).split("://", 1)[-1].strip("/") for u in urls if str(u).strip())
    simple = {
        "datadir": "data_dir",
        "web_port": "web_port",
        "web_host": "web_host",
        "topic_partitions": "topic_partitions",
        "topic_replication_factor": "replication_factor",
        "table_standby_replicas": "standby_replicas",
        "processing_guarantee": "processing_guarantee",
    }
    for faust_name, sluice_name in simple.items():
        if options.get(faust_name) is not None:
            out[sluice_name] = options[faust_name]
    if options.get("broker_commit_interval") is not None:
        out["commit_interval_ms"] = int(float(options["broker_commit_interval"]) * 1000)
    if options.get("broker_session_timeout") is not None:
        out["session_timeout_ms"] = int(float(options["broker_session_timeout"]) * 1000)
    return out


class BootStrategy(FaustBootStrategy):
    """What a sluice worker starts: the web server, the agents, then the data plane (which
    subscribes once every agent has reached its stream). Faust's consumer, conductor, producer
    and table manager stay off."""

    app: Any

    def server(self) -> Iterable[ServiceT]:
        app = self.app
        return self._chain(self.web_server(), [app.agents], [app.data_plane])

    def client_only(self) -> Iterable[ServiceT]:
        raise ImproperlyConfigured("sluice: client-only mode is not supported; run a worker")

    def producer_only(self) -> Iterable[ServiceT]:
        return self._chain(self.web_server())


class App(faust.App):
    BootStrategy = BootStrategy

    def __init__(
        self, id: str | None = None, *, sluice_settings: Settings | None = None, **options: Any
    ) -> None:
        overrides = sluice_overrides(id, options)
        if sluice_settings is None:
            sluice_settings = load_settings(**overrides)
        elif overrides:
            sluice_settings = sluice_settings.model_copy(update=overrides)
        self.sluice_settings: Settings = sluice_settings
        settings = sluice_settings
        for name, cls in _CLASSES.items():
            options.setdefault(name, cls)
        for name in UNSUPPORTED_OPTIONS:
            options.pop(name, None)
        options["broker"] = [f"kafka://{b}" for b in settings.brokers]
        options["datadir"] = str(settings.data_dir)
        options.setdefault("web_port", settings.web_port)
        options.setdefault("web_bind", settings.web_host)
        if settings.web_host not in ("0.0.0.0", "::", ""):  # else Faust's default: the hostname
            options.setdefault("web_host", settings.web_host)
        options.setdefault("topic_partitions", settings.topic_partitions)
        options.setdefault("logging_config", logging_config(settings.log_level))
        super().__init__(settings.app_id, **options)
        self.sluice_metrics = Metrics()
        self.data_plane = DataPlane(self, self.sluice_metrics)
        self._sluice_stopped: asyncio.Event | None = None
        add_views(self)

    @property
    def sluice_stopped(self) -> asyncio.Event:
        if self._sluice_stopped is None:
            self._sluice_stopped = asyncio.Event()
        return self._sluice_stopped

    def final_settings(self) -> Settings:
        """The settings at start: ``faust worker`` flags (``--web-port``, ``--datadir`` …) have
        been applied to ``app.conf`` by then, and win."""
        conf = self.conf
        return self.sluice_settings.model_copy(
            update={
                "web_port": int(conf.web_port),
                "data_dir": Path(str(conf.datadir)),
            }
        )

    # ------------------------------------------------------------------ declarations

    def topic(
        self,
        *topics: str,
        pack: bool = False,
        combine: Any = None,
        watermarks: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Faust's ``app.topic``, plus sluice's ``pack``/``combine``/``watermarks`` options
        (:mod:`service.app.topic`)."""
        topic: Any = super().topic(*topics, **kwargs)
        topic.configure_sluice(pack=pack, combine=combine, watermarks=watermarks)
        self.data_plane.declare_topic(topic)
        return topic

    def Table(self, name: str, **kwargs: Any) -> Any:
        if kwargs.get("use_partitioner"):
            raise ImproperlyConfigured("sluice: Table(use_partitioner=True) is not supported")
        return super().Table(name, **kwargs)

    def GlobalTable(self, *args: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured(
            "sluice: GlobalTable is not supported; use app.Table (co-partitioned) and table_route"
        )

    def SetTable(self, *args: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured("sluice: SetTable is not supported; use app.Table with list values")

    SetGlobalTable = GlobalTable

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self.finalize()

    def _create_directories(self) -> None:
        """``SLUICE_DATA_DIR`` may name a directory whose parents do not exist yet (Faust makes
        only the last level)."""
        Path(str(self.conf.datadir)).mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    async def _wait_for_table_recovery_completed(self) -> bool:
        """Timers, tasks and the user's services start once the worker has joined its group
        and restored its tables (as Faust waits for its recovery). True: stopped meanwhile."""
        plane = self.data_plane
        while not plane.ready():
            if plane.should_stop or plane.failure is not None:
                return True
            await asyncio.sleep(0.05)
        return False
