"""murmur2 and record placement: must match Kafka's Java client exactly.

The expected hashes were produced by Kafka's own ``org.apache.kafka.common.utils.Utils.murmur2``
(kafka-clients 3.9.1); ``test_murmur2_matches_java_live`` recomputes them with the jar when
Java and a cached Kafka download are present, so the table cannot drift from the real thing.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from service.kafka.murmur2 import murmur2, partition_for_key, to_positive
from service.kafka.placement import Partitioner, Placement, RoundRobin

# hex of the input -> Utils.murmur2 (signed Java int), computed with kafka-clients 3.9.1.
JAVA_VECTORS: dict[str, int] = {
    "": 275646681,
    "61": -1563381124,
    "6162": 316155434,
    "616263": 479470107,
    "61626364": -1323649548,
    "6162636465": 461995741,
    "3231": -973932308,
    "666f6f626172": -790332482,
    "68656c6c6f20776f726c64": 1221641059,
    "612d6c6974746c652d6269742d6c6f6e672d737472696e67": -985981536,
    "612d6c6974746c652d6269742d6c6f6e6765722d737472696e67": -1486304829,
    "6c6b6a683233346c68396669756839307932336f697568736166756a6861646f66323239706872"
    "396831396838396838": -58897971,
    "c3bc6ec3af63c3b664c3a9": 201421315,
    "ffffffffffffff": -71293549,
    "00000000": 850957120,
    bytes(range(256)).hex(): -1948347274,
    "6b65792d3432": -187086521,
    "808182": -1975640061,
}

_JAVA_PROGRAM = """
import org.apache.kafka.common.utils.Utils;
import java.util.HexFormat;
public class Murmur {
    public static void main(String[] args) {
        for (String hex : args) {
            System.out.println(hex + " " + Utils.murmur2(HexFormat.of().parseHex(hex)));
        }
    }
}
"""


@pytest.mark.parametrize(("hex_input", "expected"), sorted(JAVA_VECTORS.items()))
def test_murmur2_matches_java_vectors(hex_input: str, expected: int) -> None:
    assert murmur2(bytes.fromhex(hex_input)) == expected


def _kafka_lib_dir() -> Path | None:
    try:
        from service.devbroker.jars import cached_lib_dir

        found = cached_lib_dir()
        if found is not None:
            return found
    except Exception:  # the dev broker package is optional for this test
        pass
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for lib in sorted((Path(base) / "sluice" / "kafka").glob("*/lib"), reverse=True):
        if any(lib.glob("kafka-clients-*.jar")):
            return lib
    return None


def test_murmur2_matches_java_live(tmp_path: Path) -> None:
    """Run Kafka's Utils.murmur2 itself on the table's inputs and on random bytes."""
    lib = _kafka_lib_dir()
    if shutil.which("java") is None or lib is None:
        pytest.skip("needs java and the Kafka jars (make setup / the broker fixture fetch them)")
    rng = random.Random(20240601)
    inputs = list(JAVA_VECTORS) + [rng.randbytes(rng.randrange(0, 40)).hex() for _ in range(200)]
    source = tmp_path / "Murmur.java"
    source.write_text(_JAVA_PROGRAM)
    # The classpath wildcard must reach java unexpanded: no shell here.
    out = subprocess.run(
        ["java", "-cp", f"{lib}/*", str(source), *inputs],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    results = dict(line.rsplit(" ", 1) for line in out.splitlines() if line.strip())
    # An empty argument prints as " <hash>"; rsplit keeps its key "".
    assert len(results) == len(set(inputs))
    for hex_input, java_value in results.items():
        assert murmur2(bytes.fromhex(hex_input)) == int(java_value), hex_input
    for hex_input, expected in JAVA_VECTORS.items():
        assert int(results[hex_input]) == expected


def test_aiokafka_default_partitioner_agrees() -> None:
    """aiokafka's DefaultPartitioner hashes keys the same way; we keep ours but check both."""
    from aiokafka.partitioner import DefaultPartitioner

    rng = random.Random(7)
    partitioner = DefaultPartitioner()
    for _ in range(500):
        key = rng.randbytes(rng.randrange(0, 64))
        n = rng.randrange(1, 50)
        partitions = list(range(n))
        assert partitioner(key, partitions, partitions) == partition_for_key(key, n)


def test_to_positive_is_not_abs() -> None:
    min_int = -(2**31)
    assert to_positive(min_int) == 0
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(5) == 5


def test_partition_for_key_known_values() -> None:
    # toPositive(-973932308) % 7 computed by hand from the Java vector for "21".
    assert partition_for_key(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    with pytest.raises(ValueError):
        partition_for_key(b"x", 0)


def test_round_robin_is_strict_rotation_from_zero() -> None:
    rotation = RoundRobin(6)
    placed = [rotation() for _ in range(600)]
    assert placed[:7] == [0, 1, 2, 3, 4, 5, 0]
    assert all(placed.count(p) == 100 for p in range(6))


@pytest.mark.parametrize("partitioner", list(Partitioner))
def test_unkeyed_records_rotate_under_both_partitioners(partitioner: Partitioner) -> None:
    placement = Placement(4, partitioner)
    assert [placement.partition(None) for _ in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_hash_places_keys_by_murmur2_and_rotation_continues_for_unkeyed() -> None:
    placement = Placement(5, Partitioner.HASH)
    assert placement.partition(b"foobar") == partition_for_key(b"foobar", 5)
    assert placement.partition(None) == 0
    assert placement.partition(b"foobar") == partition_for_key(b"foobar", 5)
    assert placement.partition(None) == 1


def test_round_robin_ignores_keys() -> None:
    placement = Placement(3, Partitioner.ROUND_ROBIN)
    assert [placement.partition(b"same") for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_fixed_partition_wins_and_is_checked() -> None:
    placement = Placement(3, Partitioner.ROUND_ROBIN, fixed=2)
    assert {placement.partition(k) for k in (None, b"a", b"b")} == {2}
    with pytest.raises(ValueError):
        Placement(3, fixed=3)
