"""``sluice produce`` / ``consume`` / ``groups`` against a real broker, cross-checked with kcat.

kcat (librdkafka) is the independent reference: its ``murmur2_random`` partitioner is the
Java client's for keyed records, and it writes arbitrary bytes that ``consume --format json``
must give back exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.kafka.record_json import decode_bytes

pytestmark = pytest.mark.integration

SLUICE = Path(sys.executable).with_name("sluice")
KCAT = shutil.which("kcat")
needs_kcat = pytest.mark.skipif(KCAT is None, reason="needs kcat (.ci/run installs it)")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}


def sluice(
    bootstrap: str, *args: str, stdin: bytes | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would; SLUICE_* variables are cleared so only the flag counts."""
    return subprocess.run(
        [str(SLUICE), *args, "--bootstrap-server", bootstrap],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=_env(),
        timeout=timeout,
    )


def start_sluice(bootstrap: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(SLUICE), *args, "--bootstrap-server", bootstrap],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def create_topic(bootstrap: str, partitions: int) -> str:
    topic = f"cli-rec-{uuid.uuid4().hex[:10]}"
    ok(
        sluice(
            bootstrap, "topics", "create", topic, "--partitions", str(partitions), "--replication-factor", "1"
        )
    )
    return topic


def consume_json(bootstrap: str, topic: str, *extra: str, timeout_ms: int = 3000) -> list[dict[str, Any]]:
    args = ["consume", topic, "--from-beginning", "--format", "json", "--timeout-ms", str(timeout_ms)]
    out = ok(sluice(bootstrap, *args, *extra))
    return [json.loads(line) for line in out.splitlines()]


def kcat(bootstrap: str, *args: str, stdin: bytes = b"") -> bytes:
    assert KCAT is not None
    proc = subprocess.run(
        [KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


@pytest.mark.parametrize("partitioner", [None, "round-robin", "hash"])
def test_unkeyed_lines_rotate_exactly(kafka, partitioner: str | None) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 6)
    extra = ["--partitioner", partitioner] if partitioner else []
    lines = b"".join(b"line-%d\n" % i for i in range(600))
    produced = sluice(bootstrap, "produce", topic, *extra, stdin=lines)
    ok(produced)
    assert produced.stderr == b"", "stderr is not a terminal: produce must be quiet"

    records = consume_json(bootstrap, topic)
    assert Counter(r["partition"] for r in records) == {p: 100 for p in range(6)}
    assert sorted(str(r["value"]) for r in records) == sorted(f"line-{i}" for i in range(600))
    assert all(r["key"] is None for r in records)


@needs_kcat
def test_hash_placement_matches_kcat_murmur2(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    ours, theirs = create_topic(bootstrap, 7), create_topic(bootstrap, 7)
    rng = random.Random(99)
    keys = [f"user-{i}-{rng.random()}" for i in range(400)] + ["", "ünïcödé", "ключ", "k:with"]
    # The value holds the key again, to tell records apart; split is at the FIRST ':'.
    data = "".join(f"{k.replace(':', '_')}:value of {k}\n" for k in keys).encode()
    source = tmp_path / "keyed.txt"
    source.write_bytes(data)

    ok(
        sluice(
            bootstrap, "produce", ours, "--partitioner", "hash", "--key-separator", ":", "--file", str(source)
        )
    )
    kcat(bootstrap, "-P", "-X", "partitioner=murmur2_random", "-K:", "-t", theirs, stdin=data)

    def placement(topic: str) -> dict[bytes, int]:
        out = kcat(bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k\t%p\n")
        pairs = [line.rsplit(b"\t", 1) for line in out.split(b"\n") if line]
        return {key: int(partition) for key, partition in pairs}

    sluice_placement, kcat_placement = placement(ours), placement(theirs)
    assert len(sluice_placement) == len(keys)
    assert sluice_placement == kcat_placement
    assert len(set(sluice_placement.values())) == 7


@needs_kcat
def test_bytes_written_by_kcat_are_read_back_exactly(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 1)
    rng = random.Random(5)
    payloads = [
        bytes(range(256)),
        rng.randbytes(2000),
        "plain text ✓\n".encode(),
        b"\xc3\x28 invalid utf-8",
        b"\n",  # (kcat skips empty files, so no empty payload here)
    ]
    files = []
    for i, payload in enumerate(payloads):
        path = tmp_path / f"payload-{i}"
        path.write_bytes(payload)
        files.append(str(path))
    # kcat sends each file as one record; key and header value are not UTF-8 either.
    key, header = b"\xff\xfek", b"v\xfe\x01"
    subprocess.run(
        [str(KCAT), "-b", bootstrap, "-P", "-t", topic, "-p", "0", b"-k" + key, b"-Hh1=" + header, *files],
        check=True,
        timeout=60,
    )

    records = consume_json(bootstrap, topic)
    assert [decode_bytes(r["value"]) for r in records] == payloads
    assert {decode_bytes(r["key"]) for r in records} == {key}
    for r in records:
        headers = r["headers"]
        assert isinstance(headers, list)
        assert [(name, decode_bytes(value)) for name, value in headers] == [("h1", header)]
    assert [r["offset"] for r in records] == list(range(len(payloads)))
    assert all(isinstance(r["timestamp"], int) and r["timestamp"] > 0 for r in records)


@needs_kcat
def test_sluice_bytes_are_read_back_by_kcat(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 1)
    lines = [b"\xff\xfe\x00binary", b"tab\tand cr\r", "ütf-8".encode(), b""]
    ok(sluice(bootstrap, "produce", topic, "--acks", "1", stdin=b"\n".join(lines) + b"\n"))
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%S:%s\x1e")
    assert out.split(b"\x1e")[:-1] == [b"%d:" % len(line) + line for line in lines]


def test_partition_max_messages_and_value_format(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 3)
    ok(
        sluice(
            bootstrap, "produce", topic, "--partition", "2", stdin=b"".join(b"v%d\n" % i for i in range(10))
        )
    )
    out = ok(
        sluice(bootstrap, "consume", topic, "--partition", "2", "--from-beginning", "--max-messages", "4")
    )
    assert out == b"v0\nv1\nv2\nv3\n"
    empty = sluice(
        bootstrap, "consume", topic, "--partition", "0", "--from-beginning", "--timeout-ms", "1500"
    )
    assert ok(empty) == b""
    bad = sluice(bootstrap, "consume", topic, "--partition", "5", "--timeout-ms", "1000")
    assert bad.returncode == 1 and b"partition 5 does not exist" in bad.stderr


def test_without_from_beginning_only_new_records_are_read(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 2)
    ok(sluice(bootstrap, "produce", topic, stdin=b"old\n"))
    consumer = start_sluice(bootstrap, "consume", topic, "--timeout-ms", "8000", "--max-messages", "2")
    time.sleep(4)  # let it start and position at the end
    ok(sluice(bootstrap, "produce", topic, stdin=b"new1\nnew2\n"))
    out, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err.decode()
    assert sorted(out.splitlines()) == [b"new1", b"new2"]


def _members(bootstrap: str, group: str) -> dict[str, set[int]]:
    """consumer-id -> partitions it owns, from ``groups describe``."""
    proc = sluice(bootstrap, "groups", "describe", group)
    if proc.returncode != 0:
        return {}
    owners: dict[str, set[int]] = {}
    for line in proc.stdout.decode().splitlines()[1:]:
        cells = line.split()
        if len(cells) == 9 and cells[6] != "-":
            owners.setdefault(cells[6], set()).add(int(cells[2]))
    return owners


def test_one_group_splits_partitions_and_sees_each_record_once(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 4)
    group = f"cli-split-{uuid.uuid4().hex[:8]}"
    args = (
        "consume",
        topic,
        "--group",
        group,
        "--from-beginning",
        "--format",
        "json",
        "--timeout-ms",
        "15000",
    )
    consumers = [start_sluice(bootstrap, *args) for _ in range(2)]
    try:
        deadline = time.monotonic() + 40
        while True:
            owners = _members(bootstrap, group)
            if len(owners) == 2 and sorted(p for ps in owners.values() for p in ps) == [0, 1, 2, 3]:
                break
            assert time.monotonic() < deadline, f"group never settled with two members: {owners}"
            time.sleep(0.5)
        ok(sluice(bootstrap, "produce", topic, stdin=b"".join(b"r%d\n" % i for i in range(400))))
        outputs = [c.communicate(timeout=90) for c in consumers]
    finally:
        for c in consumers:
            if c.poll() is None:
                c.kill()
                c.wait()
    seen: list[list[dict[str, Any]]] = []
    for (out, err), c in zip(outputs, consumers, strict=True):
        assert c.returncode == 0, err.decode()
        seen.append([json.loads(line) for line in out.splitlines()])
    assert all(records for records in seen), "each member should have received some partitions"
    values = [r["value"] for records in seen for r in records]
    assert len(values) == 400 and set(values) == {f"r{i}" for i in range(400)}
    partitions = [{r["partition"] for r in records} for records in seen]
    assert not partitions[0] & partitions[1]


def test_two_groups_each_see_every_record(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 3)
    ok(sluice(bootstrap, "produce", topic, stdin=b"".join(b"e%d\n" % i for i in range(90))))
    consumers = [
        start_sluice(bootstrap, "consume", topic, "--group", f"cli-g{n}-{uuid.uuid4().hex[:8]}",
                     "--from-beginning", "--timeout-ms", "4000")
        for n in (1, 2)
    ]  # fmt: skip
    for c in consumers:
        out, err = c.communicate(timeout=90)
        assert c.returncode == 0, err.decode()
        assert sorted(out.splitlines()) == sorted(b"e%d" % i for i in range(90))


def test_groups_describe_shows_committed_offsets_and_lag(kafka) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    topic = create_topic(bootstrap, 3)
    group = f"cli-lag-{uuid.uuid4().hex[:8]}"
    ok(sluice(bootstrap, "produce", topic, stdin=b"".join(b"x%d\n" % i for i in range(60))))
    out = ok(
        sluice(bootstrap, "consume", topic, "--group", group, "--from-beginning", "--max-messages", "45")
    )
    assert len(out.splitlines()) == 45

    assert group in ok(sluice(bootstrap, "groups", "list")).decode().splitlines()
    described = sluice(bootstrap, "groups", "describe", group)
    lines = ok(described).decode().splitlines()
    assert lines[0].split() == [
        "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST",
        "CLIENT-ID",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:]]
    assert {(r[0], r[1]) for r in rows} == {(group, topic)}
    assert sorted(int(r[2]) for r in rows) == [0, 1, 2]
    committed = sum(int(r[3]) for r in rows if r[3] != "-")
    assert committed == 45
    assert [int(r[4]) for r in rows] == [20, 20, 20]
    assert sum(int(r[5]) for r in rows if r[5] != "-") + sum(20 for r in rows if r[3] == "-") == 15
    assert all(r[6:] == ["-", "-", "-"] for r in rows)  # nobody is consuming now
    assert b"no active members" in described.stderr

    missing = sluice(bootstrap, "groups", "describe", f"cli-none-{uuid.uuid4().hex[:8]}")
    assert missing.returncode == 1 and b"does not exist" in missing.stderr
