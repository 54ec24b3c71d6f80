"""Usage and configuration errors of the Kafka commands: one line, exit 2, no broker needed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from service.cli import main

# Nothing listens on port 1: a command that got past validation would fail with exit 1.
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("SLUICE_BROKERS", "SLUICE_SECURITY_PROTOCOL", "SLUICE_SASL_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "create", "t", "--replication-factor", "1"],  # --partitions missing
        ["topics", "create", "t", "--partitions", "0", "--replication-factor", "1"],
        ["topics", "create", "t", "--partitions", "1", "--replication-factor", "0"],
        ["topics", "create", "t", "--partitions", "1", "--replication-factor", "1", "--config", "x"],
        ["topics", "create", "bad name", "--partitions", "1", "--replication-factor", "1"],
        ["topics", "describe"],  # NAME missing
        ["produce", "t", "--partition", "1", "--partitioner", "hash"],
        ["produce", "t", "--partitioner", "sticky"],
        ["produce", "t", "--key-separator", ""],
        ["produce", "t", "--acks", "2"],
        ["produce", "t", "--partition", "-1"],
        ["produce", "t", "--file", "/nonexistent/input.txt"],
        ["consume", "t", "--group", "g", "--partition", "0"],
        ["consume", "t", "--format", "xml"],
        ["consume", "t", "--max-messages", "0"],
        ["consume", "t", "--timeout-ms", "-5"],
        ["groups", "describe", "a", "b"],
        ["topics", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(main, [*args, "--bootstrap-server", UNREACHABLE], input="")
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    "command",
    [["topics", "list"], ["groups", "list"], ["produce", "t"], ["consume", "t"]],
)
def test_bad_bootstrap_server_is_a_config_error(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--bootstrap-server", "no-port-here"], input="")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "SLUICE_BROKERS" in result.stderr


def test_delete_without_yes_refuses_when_stdin_is_not_a_terminal(runner: CliRunner) -> None:
    result = runner.invoke(main, ["topics", "delete", "t", "--bootstrap-server", UNREACHABLE])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "sluice: refusing to delete topic 't' without --yes: stdin is not a terminal"
    )


def test_incomplete_sasl_settings_are_a_config_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    result = runner.invoke(main, ["topics", "list", "--bootstrap-server", UNREACHABLE])
    assert result.exit_code == 2
    assert result.stderr.strip() == "sluice: SLUICE_SASL_USERNAME is required with SASL_PLAINTEXT"


@pytest.mark.parametrize(
    "command",
    [
        ["topics", "list"],
        ["tables", "dump", "wordcount"],
        ["offsets", "audit"],
        ["offsets", "reset", "--to", "table", "--dry-run"],
        ["dev", "traffic", "--seconds", "1"],
    ],
)
def test_unreachable_broker_is_an_operation_failure_in_one_line(
    runner: CliRunner, command: list[str]
) -> None:
    result = runner.invoke(main, [*command, "--bootstrap-server", UNREACHABLE])
    assert result.exit_code == 1
    assert result.stderr.startswith("sluice: cannot connect to Kafka at 127.0.0.1:1")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "command",
    [
        ["topics", "create"],
        ["topics", "list"],
        ["topics", "describe"],
        ["topics", "delete"],
        ["produce"],
        ["consume"],
        ["groups", "list"],
        ["groups", "describe"],
    ],
)
def test_every_command_documents_exit_codes_and_bootstrap_server(
    runner: CliRunner, command: list[str]
) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes: 0 ok, 1 the Kafka operation failed, 2 bad usage or configuration" in text
    assert "--bootstrap-server" in text


def test_consume_help_documents_the_json_byte_encoding(runner: CliRunner) -> None:
    text = " ".join(runner.invoke(main, ["consume", "--help"]).output.split())
    assert '{"base64": "<standard base64>"}' in text


def test_produce_help_documents_the_default_partitioner(runner: CliRunner) -> None:
    text = " ".join(runner.invoke(main, ["produce", "--help"]).output.split())
    assert "Default: hash, which places keyed records by hash and unkeyed ones by rotation" in text
