"""Issue 7: the worker's logs are JSON lines on stderr, never carry secrets, and obey the level.

Real ``sluice worker`` processes on the session broker, with stdout and stderr captured apart,
through a whole life: start, join, process good and bad input, SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fault.workload import BAD_EVENTS
from tests.harness import SLUICE, WorkerProcess, produce, unique, wait_caught_up

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-value"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class StderrWorker(WorkerProcess):
    """A worker whose stdout and stderr go to separate files (``log_path`` is stderr)."""

    def start(self) -> StderrWorker:
        self.out_path = self.log_path.with_suffix(".stdout")
        with self.log_path.open("ab") as err, self.out_path.open("ab") as out:
            self.proc = subprocess.Popen([SLUICE, "worker"], env=self.env, stdout=out, stderr=err)
        return self


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON; fails on the first line that is not a log record."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from None
        assert isinstance(doc, dict), line
        assert {"level", "event", "ts"} <= doc.keys(), line
        assert doc["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(doc["event"], str) and doc["event"], line
        assert TIMESTAMP.match(doc["ts"]), line
        records.append(doc)
    return records


def run_life(kafka: Any, tmp_path: Path, name: str, **env: str) -> StderrWorker:
    """Start a worker, feed it good and malformed input, wait until done, SIGTERM it."""
    bootstrap = kafka.bootstrap_servers
    app_id, lines, events = unique("logs"), unique("lines"), unique("events")
    worker = StderrWorker(
        bootstrap,
        tmp_path / name,
        app_id,
        tmp_path / f"{name}.stderr",
        SLUICE_WORDCOUNT_INPUT_TOPIC=lines,
        SLUICE_WORDCOUNT_OUTPUT_TOPIC=unique("word-counts"),
        SLUICE_ROLLUP_INPUT_TOPIC=events,
        SLUICE_ROLLUP_OUTPUT_TOPIC=unique("rollups"),
        SLUICE_DEAD_LETTER_TOPIC=unique("dead"),
        **env,
    ).start()
    try:
        worker.wait_ready()
        asyncio.run(produce(bootstrap, lines, [b"a line of words", b"\xff\xfe bad utf8"] * 50, 4))
        good = [b'{"key": "k", "value": 1, "ts": 1700000000000}'] * 50
        asyncio.run(produce(bootstrap, events, good + BAD_EVENTS * 5, 4))
        topics = [lines, events, f"{app_id}-wordcount-repartition", f"{app_id}-rollup-repartition"]
        wait_caught_up(bootstrap, app_id, topics)
        status, metrics = worker.get("/metrics")
        assert status == 200 and "sluice_dead_letters_total" in metrics
        assert SECRET not in metrics
        assert worker.kill(signal.SIGTERM) == 0, worker.tail()
    finally:
        if worker.alive():
            worker.kill(signal.SIGKILL)
    return worker


@pytest.fixture(scope="module")
def secret_life(kafka, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One worker's whole life at DEBUG with a SASL password set (unused: PLAINTEXT)."""
    return run_life(
        kafka,
        tmp_path_factory.mktemp("logs"),
        "secret",
        SLUICE_LOG_LEVEL="DEBUG",
        SLUICE_SECURITY_PROTOCOL="PLAINTEXT",
        SLUICE_SASL_USERNAME="svc-user",
        SLUICE_SASL_PASSWORD=SECRET,
    )


def test_stderr_is_json_lines_without_the_secret(secret_life: StderrWorker) -> None:
    worker = secret_life
    raw = worker.log_path.read_text(errors="replace") + worker.out_path.read_text(errors="replace")
    assert SECRET not in raw
    assert SECRET.encode().hex() not in raw  # not even encoded
    records = json_lines(worker.log_path)
    assert worker.out_path.read_text() == "", "the worker writes logs to stderr only"
    events = [r["event"] for r in records]
    for expected in ("settings", "worker started", "partitions assigned", "worker stopped"):
        assert expected in events, f"no {expected!r} line in {events}"
    # The settings line is where a secret would leak: the password is there, redacted.
    settings = next(r for r in records if r["event"] == "settings")["settings"]
    assert settings["sasl_password"] == "***"
    assert settings["sasl_username"] == "svc-user"
    stopped = next(r for r in records if r["event"] == "worker stopped")
    assert stopped["exit_code"] == 0


SECRET_SETTINGS = {"sasl_password", "sasl_password_file", "ssl_keyfile"}


def test_settings_line_hides_only_secrets(secret_life: StderrWorker) -> None:
    """An operator reads the settings line to see what a worker runs with: only secrets hidden."""
    records = json_lines(secret_life.log_path)
    settings = next(r for r in records if r["event"] == "settings")["settings"]
    hidden = {name for name, value in settings.items() if value == "***"}
    assert hidden - SECRET_SETTINGS == set(), (
        f"non-secret settings redacted: {sorted(hidden - SECRET_SETTINGS)}"
    )
    assert settings["app_id"] == secret_life.env["SLUICE_APP_ID"]
    assert settings["wordcount_input_topic"] == secret_life.env["SLUICE_WORDCOUNT_INPUT_TOPIC"]


def test_config_error_does_not_show_the_secret(tmp_path: Path) -> None:
    env = {
        "SLUICE_SASL_PASSWORD": SECRET,
        "SLUICE_SECURITY_PROTOCOL": "PLAINTEXT",
        "SLUICE_SASL_MECHANISM": "NOT-A-MECHANISM",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
    }
    out = subprocess.run(
        [SLUICE, "worker"], env={**_base_env(), **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert "SLUICE_SASL_MECHANISM" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_warning_level_suppresses_info_lines(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    quiet = run_life(kafka, tmp_path, "quiet", SLUICE_LOG_LEVEL="WARNING")
    records = json_lines(quiet.log_path)
    assert not [r for r in records if r["level"] in ("debug", "info")]
    # The filter lets errors through: the same disk under another app id is refused (exit 2)
    # with an error line.
    refused = StderrWorker(
        kafka.bootstrap_servers,
        quiet.data_dir,
        unique("other-app"),
        tmp_path / "refused.stderr",
        SLUICE_LOG_LEVEL="WARNING",
    ).start()
    assert refused.wait(60) == 2, refused.tail()
    lines = refused.log_path.read_text().splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    # Besides JSON, only the documented one-line summary of an exit-2 failure.
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) <= 1 and all(line.startswith("sluice: ") for line in plain), plain
    assert any(r["level"] == "error" for r in logged), lines
    assert not [r for r in logged if r["level"] in ("debug", "info")], lines
    # The same life at the default level does log info lines (the assertion above can fail).
    chatty = run_life(kafka, tmp_path, "chatty")
    assert any(r["level"] == "info" for r in json_lines(chatty.log_path))


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
