"""The local broker's configuration, jar cache and CLI guards, checked without starting a JVM."""

from __future__ import annotations

import socket
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main
from service.devbroker import LocalCluster, jars
from service.devbroker.config import (
    NodeSpec,
    node_properties,
    normalise_overrides,
    plan_nodes,
    render,
    voters,
)
from service.devbroker.jvm import random_cluster_id
from service.devbroker.layout import ClusterState, Layout
from service.devbroker.ports import free_port_block, port_is_free
from service.devbroker.version import KafkaVersion, resolve_version
from service.errors import ConfigError, OperationError

ROOT = Path(__file__).resolve().parents[2]


def _three(tmp_path: Path) -> tuple[NodeSpec, ...]:
    return plan_nodes(29092, 3, [41001, 41002, 41003], tmp_path)


def test_single_node_ports_voters_and_rf1(tmp_path: Path) -> None:
    (node,) = plan_nodes(29092, 1, [41001], tmp_path)
    props = node_properties(node, [node])
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41001"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:41001"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"  # controller not advertised
    assert props["log.dirs"] == str(tmp_path.absolute() / "node-1")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["delete.topic.enable"] == "true"
    assert props["log.cleaner.dedupe.buffer.size"] == "2097152"
    assert "broker.session.timeout.ms" not in props


def test_three_nodes_share_voters_and_use_rf3(tmp_path: Path) -> None:
    nodes = _three(tmp_path)
    assert [n.client_port for n in nodes] == [29092, 29093, 29094]
    assert voters(nodes) == "1@127.0.0.1:41001,2@127.0.0.1:41002,3@127.0.0.1:41003"
    props = node_properties(nodes[1], nodes)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == voters(nodes)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29093,CONTROLLER://127.0.0.1:41002"
    assert props["log.dirs"].endswith("node-2")
    expected = {
        "default.replication.factor": "3",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "min.insync.replicas": "2",
        "transaction.state.log.min.isr": "2",
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "auto.leader.rebalance.enable": "false",
    }
    assert {key: props[key] for key in expected} == expected


def test_overrides_win_and_are_stringified(tmp_path: Path) -> None:
    nodes = _three(tmp_path)
    props = node_properties(
        nodes[0],
        nodes,
        {
            "offsets.retention.minutes": 1,
            "offsets.retention.check.interval.ms": 1000,
            "min.insync.replicas": 3,
        },
    )
    assert props["offsets.retention.minutes"] == "1"
    assert props["offsets.retention.check.interval.ms"] == "1000"
    assert props["min.insync.replicas"] == "3"
    assert normalise_overrides({"auto.create.topics.enable": False}) == {"auto.create.topics.enable": "false"}


@pytest.mark.parametrize("bad", [{"bad key": 1}, {"=x": 1}, {"a.b": "1\nnode.id=9"}])
def test_bad_overrides_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        normalise_overrides(bad)


@pytest.mark.parametrize(
    ("base", "brokers", "controllers"),
    [
        (29092, 2, [1, 2]),  # only 1 or 3 nodes
        (80, 1, [41001]),  # privileged port
        (65535, 3, [1, 2, 3]),  # P+2 past 65535
        (29092, 3, [41001, 41001, 41002]),  # duplicate controller port
        (29092, 3, [41001, 29093, 41002]),  # controller port = a client port
        (29092, 3, [41001]),  # one controller port per node
    ],
)
def test_bad_plans_are_refused(base: int, brokers: int, controllers: list[int], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        plan_nodes(base, brokers, controllers, tmp_path)


def test_render_sorts_and_escapes() -> None:
    assert render({"b": "2", "a": r"C:\x"}) == "a=C:\\\\x\nb=2\n"


def test_cluster_id_looks_like_kafkas() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-") and "=" not in cid


def test_versions_pick_the_logging_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_KAFKA_VERSION", raising=False)
    assert str(resolve_version()) == "3.9.1"
    monkeypatch.setenv("SLUICE_KAFKA_VERSION", "4.1.2")
    v4 = resolve_version()
    assert v4 == KafkaVersion(4, 1, 2) and v4.uses_log4j2
    assert v4.log_config_option("/x/log4j2.properties") == "-Dlog4j2.configurationFile=/x/log4j2.properties"
    v3 = resolve_version("3.9.1")
    assert v3.log_config_name == "log4j.properties"
    assert v3.log_config_option("/x/l.p") == "-Dlog4j.configuration=file:/x/l.p"
    for bad in ("3.8.0", "2.8.1", "5.0.0", "latest", "4.1"):
        with pytest.raises(ConfigError):
            resolve_version(bad)


def test_package_ships_pom_and_log_configs_and_deploy_copy_matches() -> None:
    package = resources.files("service.devbroker")
    pom = package.joinpath("pom.xml").read_text(encoding="utf-8")
    assert "<kafka.version>3.9.1</kafka.version>" in pom
    assert "log4j-slf4j-impl" in pom and "log4j-slf4j2-impl" not in pom.split("-->", 1)[1]
    assert (ROOT / "deploy" / "kafka" / "pom.xml").read_text(encoding="utf-8") == pom
    for name in ("log4j.properties", "log4j2.properties"):
        text = package.joinpath(name).read_text(encoding="utf-8")
        assert "KafkaRaftServer" in text  # keeps the "Kafka Server started" INFO line


def _fake_lib(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_bytes(b"")
    return root


def test_lib_check_wants_the_broker_and_exactly_one_binding(tmp_path: Path) -> None:
    v = KafkaVersion(3, 9, 1)
    jars._check_lib(v, _fake_lib(tmp_path / "ok", ["kafka_2.13-3.9.1.jar", "slf4j-reload4j-1.7.36.jar"]))
    with pytest.raises(OperationError, match="exactly one"):
        jars._check_lib(v, _fake_lib(tmp_path / "none", ["kafka_2.13-3.9.1.jar", "slf4j-api-1.7.36.jar"]))
    two = ["kafka_2.13-3.9.1.jar", "slf4j-reload4j-1.7.36.jar", "log4j-slf4j-impl-2.25.3.jar"]
    with pytest.raises(OperationError, match="exactly one"):
        jars._check_lib(v, _fake_lib(tmp_path / "two", two))
    with pytest.raises(OperationError, match=r"kafka_2\.13"):
        jars._check_lib(v, _fake_lib(tmp_path / "nokafka", ["slf4j-reload4j-1.7.36.jar"]))


def test_jar_cache_is_reused_only_after_the_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_KAFKA_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no mvn: a download attempt fails
    (tmp_path / "3.9.1" / "lib").mkdir(parents=True)
    assert jars.cached_lib_dir("3.9.1") is None  # lib/ without marker: interrupted download
    with pytest.raises(ConfigError, match="mvn"):
        jars.ensure_jars("3.9.1")
    (tmp_path / "3.9.1" / jars.MARKER).write_text("3.9.1\n")
    assert jars.ensure_jars("3.9.1") == tmp_path / "3.9.1" / "lib"


def test_layout_state_round_trip_and_reuse_guard(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.read_state() is None
    state = ClusterState("AAAAAAAAAAAAAAAAAAAAAA", 1, "3.9.1", (41001,))
    layout.write_state(state)
    assert layout.read_state() == state
    layout.check_reusable(state, 1, "3.9.1")
    with pytest.raises(ConfigError, match="another data dir"):
        layout.check_reusable(state, 3, "3.9.1")
    with pytest.raises(ConfigError, match="another data dir"):
        layout.check_reusable(state, 1, "4.1.2")


def test_cluster_addresses_are_known_before_start(tmp_path: Path) -> None:
    cluster = LocalCluster(base_port=29092, brokers=3, data_dir=tmp_path, kafka_version="3.9.1")
    assert cluster.node_ids == (1, 2, 3)
    assert cluster.port_of(3) == 29094
    assert cluster.bootstrap_servers == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    assert cluster.pid_of(1) is None
    cluster.stop()  # stopping a cluster that never started is a no-op
    with pytest.raises(ConfigError):
        cluster.port_of(4)
    with pytest.raises(ConfigError):
        LocalCluster(base_port=29092, heap="lots")
    with pytest.raises(ConfigError):
        LocalCluster(base_port=29092, brokers=2)


def _listen_on_block() -> tuple[int, socket.socket]:
    base = free_port_block(1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", base))
    sock.listen()
    return base, sock


def test_start_refuses_a_port_in_use_before_any_jvm(tmp_path: Path) -> None:
    port, sock = _listen_on_block()
    with sock:
        assert not port_is_free(port)
        with pytest.raises(ConfigError, match=f"port {port} .* in use"):
            LocalCluster(base_port=port, data_dir=tmp_path).start()


def test_cli_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port, sock = _listen_on_block()
    with sock:
        result = CliRunner().invoke(main, ["dev", "broker", "--port", str(port), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"sluice: port {port} on 127.0.0.1 is in use: stop what listens there"
    ]


def test_cli_help_names_the_ready_line() -> None:
    result = CliRunner().invoke(main, ["dev", "broker", "--help"])
    assert result.exit_code == 0
    assert '"ready <bootstrap-servers>"' in result.output
