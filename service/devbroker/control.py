"""Driving a running :class:`LocalCluster` by hand: the commands ``sluice dev broker`` reads.

A developer rehearses a broker failure on a 3-node cluster by typing ``kill 2`` (or by killing
the JVM from outside) and later ``start 2``, while clients keep using the other two nodes.
The commands, one per line:

    status      one line per node: id, client port, running or stopped, pid
    stop N      SIGTERM: node N shuts down in a controlled way
    kill N      SIGKILL: node N dies as in a crash
    start N     node N starts again on its data dir; answered once it is registered again

Every command gets one answer line (``status``: one per node) through ``say``; the CLI sends
them to stderr, so that stdout keeps only what scripts parse. A node that exits on its own is
reported once, with the nodes still running and how to restart it. The command fails only
when such an exit leaves no node running, as when the broker of a 1-node cluster dies.

Input is read in the main thread with select and ``os.read``, not by a thread of its own:
restarted JVMs must be forked by the long-lived main thread (PR_SET_PDEATHSIG follows the
forking thread, see :mod:`service.devbroker.jvm`), SIGINT/SIGTERM handlers interrupt select,
and no thread is left blocked in a buffered read of stdin at exit. End of input ends the
commands only: a cluster started from a script with ``</dev/null`` keeps running.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

from service.devbroker.cluster import LocalCluster
from service.errors import OperationError

COMMANDS = "status, stop N, kill N, start N"
_TICK = 0.5
_READ_SIZE = 4096

Say = Callable[[str], None]


def serve(cluster: LocalCluster, say: Say, commands_fd: int = 0) -> None:
    """Answer commands from ``commands_fd`` and watch the nodes until a signal handler unwinds.

    Raises :class:`OperationError` when a node exits on its own and leaves none running.
    """
    control = Control(cluster, say)
    reader = LineReader(commands_fd)
    while True:
        control.check()
        for line in reader.read(_TICK):
            control.check()
            control.handle(line)


class Control:
    """The nodes a started cluster should have running, and the commands that change them."""

    def __init__(self, cluster: LocalCluster, say: Say) -> None:
        self._cluster = cluster
        self._say = say
        self._expected = {n for n in cluster.node_ids if cluster.pid_of(n) is not None}

    def handle(self, line: str) -> None:
        """Carry out one command line and answer it; a blank line is not a command."""
        words = line.split()
        if not words:
            return
        verb, args = words[0].lower(), words[1:]
        if verb == "status" and not args:
            for node_id in self._cluster.node_ids:
                self._say(self._status(node_id))
            return
        if verb not in ("stop", "kill", "start"):
            self._say(f"unknown command {line.strip()!r}; commands: {COMMANDS}")
            return
        nodes = _listed(list(self._cluster.node_ids))
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) not in self._cluster.node_ids:
            self._say(f"{verb} needs one node id of {nodes}, not {' '.join(args) or 'none'}")
            return
        node_id = int(args[0])
        try:
            if verb == "start":
                self._say(self._start(node_id))
            else:
                self._say(self._stop(node_id, signal.SIGTERM if verb == "stop" else signal.SIGKILL))
        except OperationError as exc:
            first = str(exc).splitlines()[0]
            self._say(f"{verb} {node_id} failed: {first}; see {self._cluster.log_path(node_id)}")

    def check(self) -> None:
        """Report each node that exited since the last call without being asked to, once."""
        gone = sorted(n for n in self._expected if self._cluster.pid_of(n) is None)
        if not gone:
            return
        self._expected.difference_update(gone)
        running = self._running()
        for node_id in gone:
            how = _exit_reason(self._cluster.exit_status(node_id))
            log = self._cluster.log_path(node_id)
            if not running:
                raise OperationError(f"Kafka node {node_id} exited unexpectedly ({how}); see {log}")
            self._say(
                f"node {node_id} (port {self._cluster.port_of(node_id)}) exited unexpectedly ({how}); "
                f"still running: {_listed(running)}; 'start {node_id}' restarts it (log: {log})"
            )

    def _status(self, node_id: int) -> str:
        pid = self._cluster.pid_of(node_id)
        state = f"running pid {pid}" if pid is not None else "stopped"
        return f"node {node_id} port {self._cluster.port_of(node_id)} {state}"

    def _stop(self, node_id: int, sig: signal.Signals) -> str:
        if self._cluster.pid_of(node_id) is None:
            return f"node {node_id} is not running"
        self._expected.discard(node_id)
        self._cluster.kill_node(node_id, sig)
        how = "stopped (SIGTERM)" if sig == signal.SIGTERM else "killed (SIGKILL)"
        running = _listed(self._running())
        return f"node {node_id} {how}; still running: {running}; 'start {node_id}' restarts it"

    def _start(self, node_id: int) -> str:
        pid = self._cluster.pid_of(node_id)
        if pid is not None:
            return f"node {node_id} is already running (pid {pid})"
        try:
            self._cluster.start_node(node_id)
        finally:
            # A node that started but was not ready in time still runs: watch it from now on.
            if self._cluster.pid_of(node_id) is not None:
                self._expected.add(node_id)
        return f"node {node_id} running again (pid {self._cluster.pid_of(node_id)})"

    def _running(self) -> list[int]:
        return [n for n in self._cluster.node_ids if self._cluster.pid_of(n) is not None]


def _listed(node_ids: list[int]) -> str:
    """``1, 3``, or ``none``."""
    return ", ".join(map(str, node_ids)) or "none"


def _exit_reason(status: int | None) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from a Popen return code."""
    if status is None:
        return "exit status unknown"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit code {status}"


class LineReader:
    """Whole lines from a file descriptor, waiting at most a tick for them.

    A terminal is read only while this process is in its foreground: a background job that
    reads its terminal is stopped by SIGTTIN, which would leave the cluster unwatched.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._buffer = b""

    def read(self, timeout: float) -> list[str]:
        """The lines that arrived within ``timeout`` s; after end of input, none, after a sleep."""
        fd = self._fd
        if fd is None or not _may_read(fd):
            time.sleep(timeout)
            return []
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready or not _may_read(fd):
                return []
            chunk = os.read(fd, _READ_SIZE)
        except OSError:  # stdin closed (EBADF): there will be no commands
            chunk = b""
        if not chunk:
            self._fd = None
            chunk = b"\n" if self._buffer else b""  # a last line without its newline
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def _may_read(fd: int) -> bool:
    """False while ``fd`` is a terminal this process is in the background of."""
    try:
        return not os.isatty(fd) or os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return True
