"""Starting and stopping the broker JVMs so that none outlives the Python process that made it.

Three things keep a JVM from being orphaned:

* ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child between fork and exec: the kernel kills the
  JVM when its parent dies, even by ``kill -9``. The signal follows the parent *thread* that
  forked, so create clusters from a long-lived thread (the main thread, a sync fixture), not
  from a short-lived worker thread.
* Each JVM gets its own session, so a terminal's Ctrl-C reaches only the Python parent, which
  then stops the nodes in order instead of all of them racing their own shutdown.
* ``LocalCluster.stop`` escalates SIGTERM to SIGKILL after a grace period.

The classpath ``<lib>/*`` is one argv element and no shell is involved: Java expands the
wildcard itself, a shell would expand it into hundreds of arguments or fail.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from service.devbroker.version import KafkaVersion
from service.errors import ConfigError, OperationError

_PR_SET_PDEATHSIG = 1

# Short-lived tools (format) start faster with C1 only and the serial collector.
_TOOL_FLAGS = ("-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` from PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ConfigError("java not found on PATH: install Java 17+ (Debian: openjdk-17-jre-headless)")
    return found


def broker_flags(heap: str) -> list[str]:
    """JVM flags of a broker: small initial heap, ``-Xmx<heap>``, G1 with short pauses."""
    return [
        "-Xms64m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
    ]


def java_command(
    lib_dir: Path,
    version: KafkaVersion,
    log_config: Path,
    main_class: str,
    args: Sequence[str],
    flags: Sequence[str] = _TOOL_FLAGS,
) -> list[str]:
    """argv of ``java <flags> <log config> -cp <lib>/* <main_class> <args>``."""
    return [
        java_executable(),
        *flags,
        version.log_config_option(str(log_config)),
        "-cp",
        f"{lib_dir}/*",
        main_class,
        *args,
    ]


def random_cluster_id() -> str:
    """A cluster id as Kafka's ``Uuid.randomUuid().toString()`` makes them: base64url, no '='.

    Kafka never hands out an id starting with '-' (it would read as a command-line flag), nor
    the all-zero id, so neither do we.
    """
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if not text.startswith("-") and any(raw):
            return text


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when this process dies.

    libc and ``prctl`` are looked up here, before fork, so the child only makes one call.
    The parent pid is compared after ``prctl`` to close the window in which the parent died
    between fork and ``prctl`` (the signal would then never come).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(command: Sequence[str], log: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with stdout and stderr to ``log``, dying with this process."""
    try:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        raise OperationError(f"cannot start {command[0]}: {exc}") from exc


def kill_stale(pid_file: Path, marker: Path) -> None:
    """Kill a JVM left from an earlier run of a data dir, if ``pid_file`` names one.

    Only a process whose command line names ``marker`` (the node's properties file) is killed,
    so a recycled pid belonging to something else is left alone. The pid file is removed.
    """
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if str(marker).encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


_SECRET_OPTIONS = frozenset({"--add-scram", "-S"})


def _shown(command: Sequence[str]) -> list[str]:
    """``command`` for an error message, with SCRAM credentials (StorageTool) replaced by ``***``."""
    shown = list(command)
    for i in range(1, len(shown)):
        if shown[i - 1] in _SECRET_OPTIONS:
            shown[i] = "***"
    return shown


def run_tools(commands: Sequence[Sequence[str]], cwd: Path, timeout: float) -> None:
    """Run short-lived JVM tools in parallel (e.g. one format per node); fail on any error."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(
                    list(command),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            )
        for command, proc in zip(commands, procs, strict=False):
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise OperationError(f"{command[-5:]} did not finish within {timeout:.0f} s") from exc
            if proc.returncode != 0:
                text = output.decode(errors="replace").strip()[-2000:]
                raise OperationError(f"{' '.join(_shown(command)[-6:])} failed: {text}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
