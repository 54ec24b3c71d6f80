"""Process facts read from ``/proc``: CPU seconds and RSS of a worker we started.

Read from ``/proc/<pid>`` rather than psutil because psutil is not a dependency of the project
and the two numbers needed are one line each.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
"""The repository: on the child's ``PYTHONPATH`` so ``bench`` imports from any cwd."""


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, with the repository importable."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (the process itself, not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for pid {pid}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM ``proc`` (one we started), SIGKILL it after ``timeout`` s; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
