"""The machine's ceiling: Kafka's own ``ConsumerPerformance`` (Java client) on the same topic.

It runs from the jars the local broker already uses (``ensure_jars``), so no extra download.
Its ``fetch.nMsg.sec`` column counts from the end of the group join to the last message,
which matches the other variants' clocks (they also exclude start-up and joining); the
``nMsg.sec`` column includes the join and is reported only as a detail.
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.sluice_run import BenchError
from service.devbroker.jars import ensure_jars
from service.devbroker.jvm import java_executable
from service.devbroker.version import resolve_version

_LOG_CONFIG = (
    "log4j.rootLogger=ERROR, err\nlog4j.appender.err=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.err.Target=System.err\nlog4j.appender.err.layout=org.apache.log4j.PatternLayout\n"
)
_LOG4J2_CONFIG = (
    "rootLogger.level=error\nrootLogger.appenderRef.err.ref=err\nappender.err.type=Console\n"
    "appender.err.name=err\nappender.err.target=SYSTEM_ERR\nappender.err.layout.type=PatternLayout\n"
)


def run_consumer_perf(bootstrap: str, topic: str, messages: int, timeout_s: float = 120) -> dict[str, Any]:
    """Consume ``messages`` from ``topic`` with a new group; return the tool's columns."""
    version = resolve_version(None)
    lib = ensure_jars(version)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-jvm-") as tmp:
        log_config = Path(tmp) / version.log_config_name
        log_config.write_text(_LOG4J2_CONFIG if version.uses_log4j2 else _LOG_CONFIG)
        command = [
            java_executable(),
            "-Xms64m",
            "-Xmx512m",
            version.log_config_option(str(log_config)),
            "-cp",
            f"{lib}/*",
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--messages",
            str(messages),
            "--group",
            f"bench-jvm-{uuid.uuid4().hex[:8]}",
            "--timeout",
            str(int(timeout_s * 1000)),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"ConsumerPerformance failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_output(done.stdout)


def parse_output(stdout: str) -> dict[str, Any]:
    """Map the tool's CSV header to its values (the last line that has as many fields)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if line.startswith("start.time")), None)
    if header_at is None or header_at + 1 >= len(lines):
        raise BenchError(f"cannot parse ConsumerPerformance output:\n{stdout[-2000:]}")
    names = [name.strip() for name in lines[header_at].split(",")]
    values = [value.strip() for value in lines[header_at + 1].split(",")]
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=False):
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    if "fetch.nMsg.sec" not in out or "data.consumed.in.nMsg" not in out:
        raise BenchError(f"ConsumerPerformance output lacks fetch.nMsg.sec:\n{stdout[-2000:]}")
    return out
