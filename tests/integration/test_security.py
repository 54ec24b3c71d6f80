"""TLS and SASL/SCRAM end to end: a real broker whose client port is SASL_SSL.

What a user of a secured cluster relies on, checked against ``LocalCluster(tls=True,
sasl_scram=True)`` (``kafka_secure``): the worker processes over SASL_SSL; the CLI works with
the same ``SLUICE_*`` settings; a wrong password and a PLAINTEXT client fail at start with one
line and exit 2 (configuration, not an outage, which stays exit 1); the password never shows in
any output; kcat (librdkafka) interoperates. ``sluice dev broker --tls/--sasl-scram`` is run as
a process for each listener kind, since that is how a developer gets such a broker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.changelog import read_table
from service.devbroker import LocalCluster
from service.settings import load_settings
from tests import kafka_fixtures
from tests.harness import WorkerProcess, read_ready, unique
from tests.kafka_fixtures import free_port_block

pytestmark = pytest.mark.integration

# The module-scoped SASL_SSL cluster; bound here because tests/conftest.py does not export it.
kafka_secure = kafka_fixtures.kafka_secure

SLUICE = str(Path(sys.executable).with_name("sluice"))
KCAT = shutil.which("kcat")
FAIL_FAST_S = 15.0
_SECURITY_VARS = (
    "SLUICE_SECURITY_PROTOCOL",
    "SLUICE_SSL_CAFILE",
    "SLUICE_SSL_CERTFILE",
    "SLUICE_SSL_KEYFILE",
    "SLUICE_SASL_MECHANISM",
    "SLUICE_SASL_USERNAME",
    "SLUICE_SASL_PASSWORD",
    "SLUICE_SASL_PASSWORD_FILE",
)


def _password(cluster: LocalCluster) -> str:
    assert cluster.sasl_password_file is not None
    return cluster.sasl_password_file.read_text().strip()


def _base_env() -> dict[str, str]:
    """The test process's environment without any SLUICE_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}


def _sluice(
    env: dict[str, str], *args: str, stdin: bytes = b"", timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SLUICE, *args], input=stdin, capture_output=True, env=env, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _settings_overrides(env: dict[str, str]) -> dict[str, object]:
    """``client_env`` as keyword arguments of ``load_settings`` (SLUICE_X -> x)."""
    return {name.removeprefix("SLUICE_").lower(): value for name, value in env.items()}


def _table(cluster: LocalCluster, app_id: str, table: str) -> dict[str, Any]:
    """A table as its changelog has it, read over SASL_SSL (harness.changelog_table is PLAINTEXT)."""
    settings = load_settings(app_id=app_id, **_settings_overrides(cluster.client_env))
    return {entry.key: entry.value for entry in asyncio.run(read_table(settings, table))}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("sluice: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_worker_counts_words_over_sasl_ssl(kafka_secure: LocalCluster, tmp_path: Path) -> None:
    env = kafka_secure.client_env
    lines_topic, app_id = unique("sec-lines"), unique("sec-app")
    worker = WorkerProcess(
        kafka_secure.bootstrap_servers,
        tmp_path / "w1",
        app_id,
        tmp_path / "w1.log",
        **{k: v for k, v in env.items() if k != "SLUICE_BROKERS"},
        SLUICE_JOBS="wordcount",
        SLUICE_WORDCOUNT_INPUT_TOPIC=lines_topic,
        SLUICE_WORDCOUNT_OUTPUT_TOPIC=unique("sec-counts"),
        SLUICE_DEAD_LETTER_TOPIC=unique("sec-dead"),
        SLUICE_TOPIC_PARTITIONS="2",
        SLUICE_LOG_LEVEL="DEBUG",
    )
    worker.start()
    try:
        worker.wait_ready(timeout=90)
        text = [f"the {word} and the lamb {i % 7}" for i, word in enumerate(["cat", "dog", "cow"] * 40)]
        _ok(_sluice({**_base_env(), **env}, "produce", lines_topic, stdin="\n".join(text).encode() + b"\n"))
        truth = Counter(token for line in text for token in line.lower().split())
        deadline = time.monotonic() + 90
        table: dict[str, Any] = {}
        while time.monotonic() < deadline:
            table = _table(kafka_secure, app_id, "wordcount")
            if table == dict(truth):
                break
            time.sleep(1)
        assert table == dict(truth)
        assert worker.alive()
    finally:
        code = worker.kill(signal.SIGTERM)
    assert code == 0, worker.tail()
    log = worker.log_path.read_text()
    assert _password(kafka_secure) not in log
    assert '"security_protocol":"SASL_SSL"' in log and '"sasl_password_file":"***"' in log


def test_cli_topics_produce_consume_over_sasl_ssl(kafka_secure: LocalCluster) -> None:
    env = {**_base_env(), **kafka_secure.client_env}
    topic = unique("sec-cli")
    outputs = [_sluice(env, "topics", "create", topic, "--partitions", "3", "--replication-factor", "1")]
    _ok(outputs[-1])
    outputs.append(_sluice(env, "topics", "list"))
    assert topic in _ok(outputs[-1]).split()
    values = [f"value-{i}" for i in range(30)]
    outputs.append(_sluice(env, "produce", topic, stdin="".join(v + "\n" for v in values).encode()))
    _ok(outputs[-1])
    outputs.append(_sluice(env, "consume", topic, "--from-beginning", "--max-messages", "30"))
    assert sorted(_ok(outputs[-1]).splitlines()) == sorted(values)
    password = _password(kafka_secure).encode()
    for proc in outputs:
        assert password not in proc.stdout + proc.stderr


def test_wrong_password_is_one_line_and_exit_2(kafka_secure: LocalCluster, tmp_path: Path) -> None:
    wrong = "not-the-password-" + unique("pw")
    env = {k: v for k, v in kafka_secure.client_env.items() if k != "SLUICE_SASL_PASSWORD_FILE"}
    env["SLUICE_SASL_PASSWORD"] = wrong
    started = time.monotonic()
    cli = _sluice({**_base_env(), **env}, "topics", "list", timeout=60)
    assert time.monotonic() - started < FAIL_FAST_S
    assert cli.returncode == 2, cli.stderr.decode()
    stderr = cli.stderr.decode()
    assert stderr.count("\n") == 1 and stderr.startswith("sluice: authentication failed at "), stderr
    assert "SLUICE_SASL_PASSWORD" in stderr and wrong not in stderr and _password(kafka_secure) not in stderr

    worker = WorkerProcess(
        kafka_secure.bootstrap_servers,
        tmp_path / "w",
        unique("sec-bad"),
        tmp_path / "w.log",
        **{k: v for k, v in env.items() if k != "SLUICE_BROKERS"},
        SLUICE_JOBS="wordcount",
    )
    started = time.monotonic()
    code = worker.start().wait(timeout=60)
    assert time.monotonic() - started < FAIL_FAST_S
    log = worker.log_path.read_text()
    assert code == 2, log
    assert "authentication failed at " in _one_error_line(log)
    assert wrong not in log and _password(kafka_secure) not in log


def test_plaintext_client_is_one_line_and_exit_2(kafka_secure: LocalCluster, tmp_path: Path) -> None:
    address = kafka_secure.bootstrap_servers
    expected = f"sluice: the broker at {address} did not answer as PLAINTEXT: check SLUICE_SECURITY_PROTOCOL"
    for args in (["topics", "list"], ["consume", "whatever", "--max-messages", "1"]):
        started = time.monotonic()
        cli = _sluice({**_base_env(), "SLUICE_BROKERS": address}, *args, timeout=60)
        assert time.monotonic() - started < FAIL_FAST_S
        assert (cli.returncode, cli.stderr.decode()) == (2, expected + "\n")

    worker = WorkerProcess(
        address, tmp_path / "w", unique("sec-plain"), tmp_path / "w.log", SLUICE_JOBS="wordcount"
    )
    started = time.monotonic()
    code = worker.start().wait(timeout=60)
    assert time.monotonic() - started < FAIL_FAST_S
    log = worker.log_path.read_text()
    assert code == 2, log
    assert _one_error_line(log) == expected


def test_broker_down_stays_exit_1(kafka_secure: LocalCluster) -> None:
    """A secured client with nobody listening is an outage, not a configuration mistake."""
    nobody = f"127.0.0.1:{free_port_block(1)}"
    env = {**_base_env(), **kafka_secure.client_env, "SLUICE_BROKERS": nobody}
    cli = _sluice(env, "topics", "list", timeout=60)
    assert cli.returncode == 1, cli.stderr.decode()
    assert cli.stderr.decode().startswith(f"sluice: cannot connect to Kafka at {nobody}")


@pytest.mark.skipif(KCAT is None, reason="needs kcat (.ci/run installs it)")
def test_kcat_talks_scram_over_tls(kafka_secure: LocalCluster) -> None:
    assert KCAT is not None and kafka_secure.ca_file is not None
    env = {**_base_env(), **kafka_secure.client_env}
    topic = unique("sec-kcat")
    _ok(_sluice(env, "topics", "create", topic, "--partitions", "1", "--replication-factor", "1"))
    _ok(_sluice(env, "produce", topic, stdin=b"from-sluice\n"))
    kcat = [
        KCAT, "-b", kafka_secure.bootstrap_servers,
        "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
        "-X", "sasl.username=sluice", "-X", f"sasl.password={_password(kafka_secure)}",
        "-X", f"ssl.ca.location={kafka_secure.ca_file}",
    ]  # fmt: skip
    produce = [*kcat, "-P", "-t", topic]
    produced = subprocess.run(produce, input=b"from-kcat\n", capture_output=True, timeout=60)
    assert produced.returncode == 0, produced.stderr.decode()
    out = subprocess.run(
        [*kcat, "-C", "-t", topic, "-e", "-q"], check=True, capture_output=True, timeout=60
    ).stdout.decode()
    assert out.split() == ["from-sluice", "from-kcat"]
    consumed = _ok(_sluice(env, "consume", topic, "--from-beginning", "--max-messages", "2"))
    assert consumed.split() == ["from-sluice", "from-kcat"]


@pytest.mark.parametrize(
    ("flags", "protocol"),
    [
        (["--tls", "--sasl-scram"], "SASL_SSL"),
        (["--tls"], "SSL"),
        (["--sasl-scram"], "SASL_PLAINTEXT"),
    ],
)
def test_dev_broker_prints_client_settings(flags: list[str], protocol: str, tmp_path: Path) -> None:
    port = free_port_block(1)
    data_dir = tmp_path / "broker"
    stderr: list[str] = []
    proc = subprocess.Popen(
        [SLUICE, "dev", "broker", "--port", str(port), "--data-dir", str(data_dir), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_base_env(),
    )
    try:
        assert read_ready(proc, 120) == f"ready 127.0.0.1:{port}"
        client_env: dict[str, str] = {}
        assert proc.stderr is not None
        wanted = {"SLUICE_BROKERS", "SLUICE_SECURITY_PROTOCOL"}
        if "--tls" in flags:
            wanted.add("SLUICE_SSL_CAFILE")
        if "--sasl-scram" in flags:
            wanted |= {"SLUICE_SASL_MECHANISM", "SLUICE_SASL_USERNAME", "SLUICE_SASL_PASSWORD_FILE"}
        while not wanted <= client_env.keys():
            line = proc.stderr.readline()  # printed right after the ready line
            assert line, f"broker stderr ended; settings so far: {client_env}"
            stderr.append(line)
            if line.startswith("SLUICE_"):
                name, _, value = line.rstrip("\n").partition("=")
                client_env[name] = value
        assert client_env["SLUICE_SECURITY_PROTOCOL"] == protocol
        assert client_env["SLUICE_BROKERS"] == f"127.0.0.1:{port}"
        if "--tls" in flags:
            assert client_env["SLUICE_SSL_CAFILE"] == str(data_dir / "tls" / "ca.pem")
        if "--sasl-scram" in flags:
            assert client_env["SLUICE_SASL_MECHANISM"] == "SCRAM-SHA-512"
            assert client_env["SLUICE_SASL_USERNAME"] == "sluice"
            password_file = Path(client_env["SLUICE_SASL_PASSWORD_FILE"])
            assert password_file == data_dir / "tls" / "sasl-password"
            assert password_file.stat().st_mode & 0o777 == 0o600
        listed = _sluice({**_base_env(), **client_env}, "topics", "create", "t", "--partitions", "1",
                         "--replication-factor", "1")  # fmt: skip
        _ok(listed)
        assert _ok(_sluice({**_base_env(), **client_env}, "topics", "list")).split() == ["t"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        stderr.append(rest)
    assert proc.returncode == 0, "".join(stderr)
    password_file = data_dir / "tls" / "sasl-password"
    if password_file.exists():
        assert password_file.read_text().strip() not in "".join(stderr)
