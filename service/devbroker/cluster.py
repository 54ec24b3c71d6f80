"""``LocalCluster``: one or three real Kafka brokers (KRaft, combined mode) on 127.0.0.1.

Used by ``sluice dev broker`` and by the pytest fixtures; synchronous on purpose, so that sync
fixtures and a plain CLI loop can drive it. Typical use::

    with LocalCluster(base_port=29092, brokers=3, data_dir=tmp) as cluster:
        cluster.bootstrap_servers      # "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
        cluster.kill_node(2)           # kill -9, as a crashed broker
        cluster.start_node(2)          # back, once its port accepts connections again

Readiness is a TCP connect to each client port: Kafka opens the client listener only once the
broker is started and unfenced (its controller port opens earlier and is never probed).

``LocalCluster(..., tls=True, sasl_scram=True)`` makes the client ports SASL_SSL (``tls`` alone:
SSL, ``sasl_scram`` alone: SASL_PLAINTEXT) with SCRAM-SHA-512 and -256 for user ``sluice``;
brokers keep talking to each other over a PLAINTEXT ``INTERNAL`` listener on other ports.
``cluster.client_env`` holds the ``SLUICE_*`` settings a client needs (the password only as
a file path, see :mod:`service.devbroker.security`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from service.devbroker import config, jvm, security
from service.devbroker.jars import ensure_jars
from service.devbroker.layout import ClusterState, Layout
from service.devbroker.ports import HOST, accepts_connections, free_ports, port_is_free
from service.devbroker.version import KafkaVersion, resolve_version
from service.errors import ConfigError, OperationError

_HEAP_RE = re.compile(r"^\d+[kKmMgG]$")
_POLL_SECONDS = 0.05
_FORMAT_TIMEOUT = 120.0
_LOG_TAIL_LINES = 30


class LocalCluster:
    """A local Kafka cluster of ``brokers`` (1 or 3) nodes, client ports ``base_port + i``.

    ``data_dir`` None means a fresh temporary directory, removed by :meth:`stop`; a given
    directory is kept and may be reused by a later cluster of the same size and version.
    ``overrides`` are broker properties that win over the defaults of
    :mod:`service.devbroker.config` (e.g. ``{"offsets.retention.minutes": 1}``).
    """

    def __init__(
        self,
        base_port: int = 9092,
        brokers: int = 1,
        data_dir: str | Path | None = None,
        kafka_version: str | None = None,
        overrides: Mapping[str, object] | None = None,
        heap: str = "512m",
        *,
        start_timeout: float = 60.0,
        stop_grace: float = 15.0,
        tls: bool = False,
        sasl_scram: bool = False,
    ) -> None:
        if brokers not in config.SUPPORTED_SIZES:
            raise ConfigError(f"a local cluster has 1 or 3 brokers, not {brokers}")
        if not _HEAP_RE.match(heap):
            raise ConfigError(f"heap {heap!r} is not a JVM size like 512m or 1g")
        self.base_port = base_port
        self.brokers = brokers
        self.version: KafkaVersion = resolve_version(kafka_version)
        self.overrides = config.normalise_overrides(overrides or {})
        self.heap = heap
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._owns_data_dir = data_dir is None
        self._data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self._nodes: dict[int, config.NodeSpec] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, IO[bytes]] = {}
        self._lib_dir: Path | None = None
        self._log_config: Path | None = None
        self.tls = tls
        self.sasl_scram = sasl_scram
        self._scram_password: str | None = None

    # -- what clients and tests read -------------------------------------------------------

    @property
    def node_ids(self) -> tuple[int, ...]:
        """Ids of the nodes, 1..brokers."""
        return tuple(range(1, self.brokers + 1))

    def port_of(self, node_id: int) -> int:
        """The client port of ``node_id`` (its listener speaks :attr:`security_protocol`)."""
        self._check_node(node_id)
        return self.base_port + node_id - 1

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:P,127.0.0.1:P+1,...``: every node, for any Kafka client."""
        return ",".join(f"{HOST}:{self.port_of(node_id)}" for node_id in self.node_ids)

    @property
    def security_protocol(self) -> str:
        """What clients must speak on the client ports: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
        return config.security_protocol(tls=self.tls, sasl_scram=self.sasl_scram)

    @property
    def tls_files(self) -> security.TlsFiles:
        """Paths of the CA, stores and password files under ``<data-dir>/tls/``."""
        return security.TlsFiles(self.data_dir / "tls")

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients verify the brokers with (TLS only), else None."""
        return self.tls_files.ca_cert if self.tls else None

    @property
    def sasl_username(self) -> str | None:
        """The SCRAM user created at format time (SASL only), else None."""
        return security.SASL_USERNAME if self.sasl_scram else None

    @property
    def sasl_password_file(self) -> Path | None:
        """The file (mode 0600) holding the SCRAM user's password (SASL only), else None."""
        return self.tls_files.sasl_password_file if self.sasl_scram else None

    @property
    def client_env(self) -> dict[str, str]:
        """The ``SLUICE_*`` variables a worker or CLI needs to use this cluster.

        Never the password itself: ``SLUICE_SASL_PASSWORD_FILE`` points at it, so the value can
        be printed, logged and copied into shell history safely.
        """
        env = {"SLUICE_BROKERS": self.bootstrap_servers, "SLUICE_SECURITY_PROTOCOL": self.security_protocol}
        if self.tls:
            env["SLUICE_SSL_CAFILE"] = str(self.tls_files.ca_cert)
        if self.sasl_scram:
            env["SLUICE_SASL_MECHANISM"] = security.CLIENT_SASL_MECHANISM
            env["SLUICE_SASL_USERNAME"] = security.SASL_USERNAME
            env["SLUICE_SASL_PASSWORD_FILE"] = str(self.tls_files.sasl_password_file)
        return env

    @property
    def data_dir(self) -> Path:
        """The cluster's directory (see :mod:`service.devbroker.layout`); known after start."""
        if self._data_dir is None:
            raise OperationError("the cluster has no data dir before start()")
        return self._data_dir

    def pid_of(self, node_id: int) -> int | None:
        """Pid of the node's JVM while it runs, else None."""
        proc = self._procs.get(node_id)
        return proc.pid if proc is not None and proc.poll() is None else None

    def exit_status(self, node_id: int) -> int | None:
        """How a node's JVM ended on its own (negative: by that signal); None if running or stopped.

        ``kill_node``, ``start_node``, ``ensure_running`` and ``stop`` forget it, so a value means
        an exit nobody here asked for: a crash, or a kill from outside.
        """
        proc = self._procs.get(node_id)
        return proc.returncode if proc is not None and proc.poll() is not None else None

    def log_path(self, node_id: int) -> Path:
        """The node's log file: WARN and above, plus "Kafka Server started"."""
        self._check_node(node_id)
        return Layout(self.data_dir).log_file(node_id)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Format every node with one cluster id, start all JVMs, wait until all accept clients.

        All nodes start before any is waited on: a broker blocks until the controller quorum
        (2 of 3) has a leader, so starting them one by one would hang on the first.
        """
        if any(self.pid_of(node_id) is not None for node_id in self.node_ids):
            raise OperationError("the cluster is already running; stop() it first")
        if self._data_dir is not None:
            old = Layout(self._data_dir)
            for node_id in self.node_ids:
                jvm.kill_stale(old.pid_file(node_id), old.properties(node_id))
        for node_id in self.node_ids:
            port = self.port_of(node_id)
            if not port_is_free(port):
                raise ConfigError(f"port {port} on {HOST} is in use: stop what listens there")
        self._lib_dir = ensure_jars(self.version)
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="sluice-kafka-")).absolute()
        layout = Layout(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            state = self._prepare(layout)
            self._format(layout, state.cluster_id)
            for node_id in self.node_ids:
                self._spawn(layout, node_id)
            self._wait_ready(self.node_ids)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every JVM, SIGKILL what is left after ``stop_grace`` s; safe to repeat.

        The nodes get their SIGTERM together (a controlled shutdown each) and share one grace
        period. A temporary data dir made by ``start()`` is removed.
        """
        atexit.unregister(self.stop)
        running = [proc for proc in self._procs.values() if proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a SIGSTOPped node must see the SIGTERM
        deadline = time.monotonic() + self.stop_grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node_id in list(self._procs):
            self._forget(node_id)
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node's JVM, as a fault would.

        For SIGKILL, SIGTERM and SIGINT this returns once the JVM is gone (SIGTERM/SIGINT get
        ``stop_grace`` s of controlled shutdown, then SIGKILL); any other signal (SIGSTOP to
        freeze a broker) is sent and returns at once.
        """
        self._check_node(node_id)
        proc = self._procs.get(node_id)
        if proc is None or proc.poll() is not None:
            raise OperationError(f"node {node_id} is not running")
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._forget(node_id)

    def start_node(self, node_id: int) -> None:
        """Start one node again (after ``kill_node``) and wait until its port accepts clients."""
        self._check_node(node_id)
        if not self._nodes:
            raise OperationError("start_node() needs a cluster that was start()ed")
        if self.pid_of(node_id) is None:
            self._forget(node_id)
            self._spawn(Layout(self.data_dir), node_id)
        self._wait_ready((node_id,))

    def ensure_running(self) -> None:
        """Resume frozen nodes and restart dead ones, then wait for all of them.

        For fault tests sharing a module-scoped cluster: call it first, so that a node left
        killed or SIGSTOPped by an earlier (failed) test does not fail this one too.
        """
        if not self._nodes:
            raise OperationError("ensure_running() needs a cluster that was start()ed")
        for node_id in self.node_ids:
            pid = self.pid_of(node_id)
            if pid is None:
                self._forget(node_id)
                self._spawn(Layout(self.data_dir), node_id)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self._wait_ready(self.node_ids)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"LocalCluster(brokers={self.brokers}, bootstrap={self.bootstrap_servers!r}, "
            f"kafka={self.version}, data_dir={self._data_dir})"
        )

    # -- internals -------------------------------------------------------------------------

    def _check_node(self, node_id: int) -> None:
        if node_id not in self.node_ids:
            raise ConfigError(f"no node {node_id}: this cluster has nodes {list(self.node_ids)}")

    def _prepare(self, layout: Layout) -> ClusterState:
        """Reuse or create the data dir's state, then write the log config and node configs."""
        client_ports = frozenset(self.port_of(node_id) for node_id in self.node_ids)
        state = layout.read_state()
        if state is not None:
            layout.check_reusable(state, self.brokers, str(self.version))
            ports: tuple[int, ...] = state.controller_ports
            if set(ports) & client_ports or not all(port_is_free(port) for port in ports):
                ports = tuple(free_ports(self.brokers, exclude=client_ports))
            state = ClusterState(state.cluster_id, self.brokers, str(self.version), ports)
        else:
            ports = tuple(free_ports(self.brokers, exclude=client_ports))
            state = ClusterState(jvm.random_cluster_id(), self.brokers, str(self.version), ports)
        layout.write_state(state)

        name = self.version.log_config_name
        self._log_config = self.data_dir / name
        text = resources.files("service.devbroker").joinpath(name).read_text(encoding="utf-8")
        self._log_config.write_text(text, encoding="utf-8")

        client_security = self._client_security(layout)
        internal_ports = None
        if client_security.secured:
            # Not remembered in cluster.json: brokers register their endpoints anew at each start.
            internal_ports = free_ports(self.brokers, exclude=client_ports | frozenset(ports))
        nodes = config.plan_nodes(self.base_port, self.brokers, ports, self.data_dir, internal_ports)
        self._nodes = {node.node_id: node for node in nodes}
        for node in nodes:
            props = config.node_properties(node, nodes, self.overrides, client_security)
            path = layout.properties(node.node_id)
            path.write_text(config.render(props), encoding="utf-8")
            if client_security.tls:
                path.chmod(0o600)  # it holds the keystore password
        return state

    def _client_security(self, layout: Layout) -> config.ClientSecurity:
        """Make (or reuse) the TLS material and SCRAM password the client listener needs.

        The SCRAM user exists only if the node dirs were formatted by a SASL run: a data dir
        first formatted without it cannot grow one through ``--ignore-formatted``, so it is
        refused here rather than failing every client with "authentication failed" later.
        """
        if not (self.tls or self.sasl_scram):
            return config.ClientSecurity()
        files = self.tls_files
        if self.sasl_scram:
            formatted = [n for n in self.node_ids if (layout.node_dir(n) / "meta.properties").is_file()]
            if formatted and not files.sasl_password_file.is_file():
                raise ConfigError(
                    f"data dir {self.data_dir} was formatted without a SCRAM user: use another "
                    "data dir for --sasl-scram"
                )
            self._scram_password = security.ensure_sasl_password(files)
        material = security.ensure_tls(files) if self.tls else None
        return config.ClientSecurity(
            tls=self.tls,
            sasl_scram=self.sasl_scram,
            keystore=material.keystore if material else None,
            truststore=material.truststore if material else None,
            store_password=material.store_password if material else None,
        )

    def _java(self, main_class: str, args: list[str], flags: list[str] | None = None) -> list[str]:
        assert self._lib_dir is not None and self._log_config is not None
        if flags is None:
            return jvm.java_command(self._lib_dir, self.version, self._log_config, main_class, args)
        return jvm.java_command(self._lib_dir, self.version, self._log_config, main_class, args, flags)

    def _format(self, layout: Layout, cluster_id: str) -> None:
        """Format every node's log dir with ``cluster_id`` (a no-op for formatted ones).

        With SASL, the SCRAM user goes into the bootstrap metadata here, for both mechanisms,
        so it exists before any broker accepts a client (KRaft has no ZooKeeper to add it to
        beforehand, and adding it afterwards would need an authenticated admin client).
        """
        scram: list[str] = []
        password = self._scram_password
        if self.sasl_scram and password is not None:
            user = security.SASL_USERNAME
            for mechanism in config.SCRAM_MECHANISMS:
                scram += ["--add-scram", security.scram_credential(mechanism, user, password)]
        commands = [
            self._java(
                "kafka.tools.StorageTool",
                [
                    "format",
                    "--config",
                    str(layout.properties(node_id)),
                    "--cluster-id",
                    cluster_id,
                    *scram,
                    "--ignore-formatted",
                ],
            )
            for node_id in self.node_ids
        ]
        jvm.run_tools(commands, cwd=self.data_dir, timeout=_FORMAT_TIMEOUT)

    def _spawn(self, layout: Layout, node_id: int) -> None:
        """Start one node's JVM, logging to ``node-<id>.log`` (appended across restarts)."""
        log = layout.log_file(node_id).open("ab")
        log.write(f"--- sluice: starting node {node_id} at {time.ctime()}\n".encode())
        log.flush()
        command = self._java("kafka.Kafka", [str(layout.properties(node_id))], jvm.broker_flags(self.heap))
        try:
            proc = jvm.spawn(command, log, cwd=self.data_dir)
        except BaseException:
            log.close()
            raise
        self._procs[node_id] = proc
        self._logs[node_id] = log
        layout.pid_file(node_id).write_text(f"{proc.pid}\n", encoding="utf-8")

    def _wait_ready(self, node_ids: tuple[int, ...]) -> None:
        """Wait until each node's client port accepts a connection; fail fast if a JVM exits."""
        pending = list(node_ids)
        deadline = time.monotonic() + self.start_timeout
        while pending:
            for node_id in list(pending):
                proc = self._procs[node_id]
                if proc.poll() is not None:
                    raise OperationError(
                        f"Kafka node {node_id} exited with code {proc.returncode} while "
                        f"starting\n{self._log_tail(node_id)}"
                    )
                if accepts_connections(self.port_of(node_id)):
                    pending.remove(node_id)
            if not pending:
                self._wait_registered(node_ids, deadline)
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(self._log_tail(node_id) for node_id in pending)
                raise OperationError(
                    f"Kafka node(s) {pending} did not accept connections within "
                    f"{self.start_timeout:.0f} s\n{tails}"
                )
            time.sleep(_POLL_SECONDS)

    def _wait_registered(self, node_ids: tuple[int, ...], deadline: float) -> None:
        """On a multi-node cluster, wait until each started node's metadata lists every running node.

        A broker opens its client port once it is unfenced, but its peers may reach its
        metadata cache a moment later: a client asking right after "ready" could see two of
        three brokers. Nodes stopped on purpose are not waited for, so a node can be restarted
        while another is down. Plaintext clusters only; secured ones are ready when their ports are.
        """
        if self.brokers == 1 or self.tls or self.sasl_scram:
            return
        while True:
            running = sum(self.pid_of(n) is not None for n in self.node_ids)
            # In a thread of its own: callers may be inside an event loop (async tests).
            with ThreadPoolExecutor(max_workers=1) as pool:
                seen = [pool.submit(asyncio.run, _brokers_seen(self.port_of(n))).result() for n in node_ids]
            if all(count >= running for count in seen):
                return
            if time.monotonic() >= deadline:
                raise OperationError(
                    f"Kafka node(s) {list(node_ids)} list {seen} of {running} running brokers after "
                    f"{self.start_timeout:.0f} s"
                )
            time.sleep(_POLL_SECONDS)

    def _log_tail(self, node_id: int) -> str:
        path = Layout(self.data_dir).log_file(node_id)
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return f"(no log at {path})"
        tail = "\n".join("  " + line for line in lines[-_LOG_TAIL_LINES:])
        return f"last lines of {path}:\n{tail}"

    def _forget(self, node_id: int) -> None:
        """Drop a finished node's process, close its log, remove its pid file."""
        self._procs.pop(node_id, None)
        log = self._logs.pop(node_id, None)
        if log is not None:
            log.close()
        if self._data_dir is not None:
            Layout(self._data_dir).pid_file(node_id).unlink(missing_ok=True)


async def _brokers_seen(port: int) -> int:
    """How many brokers the node on ``port`` reports in its metadata (0 if it cannot answer)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    except (KafkaError, OSError):
        return 0
    finally:
        await client.close()
