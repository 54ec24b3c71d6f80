"""``sluice topics`` against a real broker: create, list, describe, delete, and their refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SLUICE = Path(sys.executable).with_name("sluice")


def sluice(
    bootstrap: str, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would; SLUICE_* variables are cleared so only the flag counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run(
        [str(SLUICE), *args, "--bootstrap-server", bootstrap],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def fails(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The single stderr line of a failed command, after checking its exit code."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert err.count("\n") == 1 and err.startswith("sluice: "), err
    return err.strip()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def partition_rows(describe_output: str) -> list[list[str]]:
    """The rows of the PARTITION table of ``topics describe``, split into cells."""
    lines = describe_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PARTITION"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def config_value(describe_output: str, name: str) -> tuple[str, str]:
    match = re.search(rf"^{re.escape(name)}\s+(\S+)\s+(\S+)$", describe_output, re.MULTILINE)
    assert match, f"{name} not in:\n{describe_output}"
    return match.group(1), match.group(2)


def test_create_list_describe_delete(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = unique("cli-topic")
    out = ok(
        sluice(
            bootstrap, "topics", "create", topic, "--partitions", "3", "--replication-factor", "1",
            "--config", "retention.ms=123456", "--config", "cleanup.policy=compact",
        )
    )  # fmt: skip
    assert out.strip() == f"Created topic {topic}."
    assert topic in ok(sluice(bootstrap, "topics", "list")).splitlines()
    assert "__consumer_offsets" not in ok(sluice(bootstrap, "topics", "list", "--exclude-internal"))

    described = ok(sluice(bootstrap, "topics", "describe", topic))
    assert described.splitlines()[0] == f"Topic: {topic}  PartitionCount: 3  ReplicationFactor: 1"
    rows = partition_rows(described)
    assert [r[0] for r in rows] == ["0", "1", "2"]
    for _, leader, replicas, isr, offline in rows:
        assert (leader, replicas, isr, offline) == ("1", "1", "1", "-")
    assert config_value(described, "retention.ms") == ("123456", "topic")
    assert config_value(described, "cleanup.policy") == ("compact", "topic")
    assert config_value(described, "max.message.bytes")[1] == "default"

    assert ok(sluice(bootstrap, "topics", "delete", topic, "--yes")).strip() == f"Deleted topic {topic}."
    deadline = time.monotonic() + 15
    while topic in ok(sluice(bootstrap, "topics", "list")).splitlines():
        assert time.monotonic() < deadline, "topic still listed 15 s after delete"
        time.sleep(0.5)


def test_refusals_are_one_line_with_exit_codes(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = unique("cli-exists")
    ok(sluice(bootstrap, "topics", "create", topic, "--partitions", "1", "--replication-factor", "1"))

    again = sluice(bootstrap, "topics", "create", topic, "--partitions", "1", "--replication-factor", "1")
    assert fails(again, 1) == f"sluice: topic '{topic}' already exists"

    too_many = sluice(
        bootstrap, "topics", "create", unique("cli-rf"), "--partitions", "1", "--replication-factor", "3"
    )
    assert fails(too_many, 1) == (
        "sluice: replication factor 3 is larger than the number of available brokers (1)"
    )

    missing = unique("cli-missing")
    assert fails(sluice(bootstrap, "topics", "describe", missing), 1) == f"sluice: unknown topic '{missing}'"
    assert fails(sluice(bootstrap, "topics", "delete", missing, "--yes"), 1) == (
        f"sluice: unknown topic '{missing}'"
    )
    # Describing a missing topic must not auto-create it (brokers default to auto-creation).
    assert missing not in ok(sluice(bootstrap, "topics", "list")).splitlines()

    bad_config = sluice(
        bootstrap, "topics", "create", unique("cli-cfg"), "--partitions", "1", "--replication-factor", "1",
        "--config", "no.such.config=1",
    )  # fmt: skip
    assert "no.such.config" in fails(bad_config, 1)

    # Not a terminal and no --yes: refused before anything is deleted.
    refused = sluice(bootstrap, "topics", "delete", topic)
    assert fails(refused, 2) == (
        f"sluice: refusing to delete topic '{topic}' without --yes: stdin is not a terminal"
    )
    assert topic in ok(sluice(bootstrap, "topics", "list")).splitlines()


def _delete_on_terminal(bootstrap: str, topic: str, answer: bytes) -> tuple[int, str]:
    """``topics delete`` with a pseudo-terminal as stdin, answering the prompt with ``answer``."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(SLUICE), "topics", "delete", topic, "--bootstrap-server", bootstrap],
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        os.close(secondary)
        os.write(primary, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(primary)
    return proc.returncode, (out + err).decode()


def test_delete_asks_on_a_terminal(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = unique("cli-confirm")
    ok(sluice(bootstrap, "topics", "create", topic, "--partitions", "1", "--replication-factor", "1"))

    code, output = _delete_on_terminal(bootstrap, topic, b"n\n")
    assert code == 1, output
    assert f"Delete topic '{topic}' and all its records?" in output
    assert topic in ok(sluice(bootstrap, "topics", "list")).splitlines()

    code, output = _delete_on_terminal(bootstrap, topic, b"y\n")
    assert code == 0, output
    assert f"Deleted topic {topic}." in output
