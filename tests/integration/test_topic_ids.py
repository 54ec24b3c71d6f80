"""service.kafka.topic_ids against a real broker: Kafka's own id, a new id per incarnation, no auto-create."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.devbroker import LocalCluster
from service.devbroker.jars import ensure_jars
from service.devbroker.jvm import java_executable
from service.errors import OperationError
from service.kafka import topic_ids as topic_ids_module
from service.kafka.client_config import client_kwargs
from service.kafka.topic_ids import parse_topic_id, topic_ids
from service.settings import Settings, load_settings
from tests import kafka_fixtures
from tests.kafka_fixtures import free_port

pytestmark = pytest.mark.integration

# The module-scoped SASL_SSL cluster; bound here because tests/conftest.py does not export it.
kafka_secure = kafka_fixtures.kafka_secure


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def settings_for(kafka: Any) -> Settings:
    return Settings(brokers=kafka.bootstrap_servers)


async def id_when(settings: Settings, name: str, present: bool, timeout_s: float = 20) -> str | None:
    """The id of ``name`` once it is (or is no longer) in the metadata; brokers learn of it async."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = (await topic_ids(settings, [name])).get(name)
        if (found is not None) == present:
            return found
        assert time.monotonic() < deadline, f"{name} {'never appeared' if present else 'still there'}"
        await asyncio.sleep(0.2)


async def admin_for(kafka: Any) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    return admin


def kafka_tool_topic_id(kafka: Any, name: str) -> str:
    """The TopicId that Kafka's TopicCommand (kafka-topics.sh) prints for ``name``."""
    lib = ensure_jars(kafka.version)
    proc = subprocess.run(
        [
            java_executable(), "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", f"{lib}/*",
            "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", kafka.bootstrap_servers,
            "--describe", "--topic", name,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    match = re.search(rf"^Topic: {re.escape(name)}\s+TopicId: (\S+)", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    return match.group(1)


async def test_id_is_kafkas_and_changes_when_the_topic_is_recreated(kafka: Any) -> None:
    settings = settings_for(kafka)
    name, other = unique("ids-recreate"), unique("ids-other")
    admin = await admin_for(kafka)
    try:
        await admin.create_topics([NewTopic(name, 2, 1), NewTopic(other, 1, 1)])
        first = await id_when(settings, name, present=True)
        assert first is not None
        assert len(first) == 22 and len(parse_topic_id(first)) == 16
        assert first == kafka_tool_topic_id(kafka, name)
        both = await topic_ids(settings, [name, other, name])
        assert set(both) == {name, other} and both[name] == first and both[other] != first

        await admin.delete_topics([name])
        await id_when(settings, name, present=False)
        await admin.create_topics([NewTopic(name, 2, 1)])
        second = await id_when(settings, name, present=True)
        assert second is not None and second != first
        assert second == kafka_tool_topic_id(kafka, name)
        assert (await topic_ids(settings, [other]))[other] == both[other]
    finally:
        await admin.close()


async def test_missing_topic_is_absent_and_not_created(kafka: Any) -> None:
    from aiokafka.protocol.metadata import MetadataRequest

    settings = settings_for(kafka)
    missing, control = unique("ids-missing"), unique("ids-control")
    assert await topic_ids(settings, [missing]) == {}
    assert await topic_ids(settings, []) == {}

    admin = await admin_for(kafka)
    try:
        # Control: this broker does auto-create (Kafka's default) for a request that allows it,
        # so the absence of ``missing`` below is due to allow_auto_topic_creation=false.
        await admin._client.send(admin._client.get_random_node(), MetadataRequest([control], True))
        deadline = time.monotonic() + 20
        while control not in await admin.list_topics():
            assert time.monotonic() < deadline, "the broker did not auto-create the control topic"
            await asyncio.sleep(0.2)
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()
    assert control in await topic_ids(settings, [control, missing])
    assert await topic_ids(settings, [missing]) == {}


async def test_broker_without_the_version_is_one_clear_error(
    kafka: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kafka 3.9/4.x serve v12, so ask for a version no broker has: the check must use the
    # versions this connection negotiated and stop before anything is sent.
    monkeypatch.setattr(topic_ids_module, "METADATA_VERSION", 99)
    with pytest.raises(OperationError) as info:
        await topic_ids(settings_for(kafka), ["anything"])
    assert re.fullmatch(
        r"the broker cannot report topic ids: it serves Metadata v0-v1[23], sluice needs v99 "
        r"\(Kafka 3\.1 or newer\)",
        str(info.value),
    ), str(info.value)


async def test_nobody_listening_is_an_operation_error() -> None:
    settings = Settings(brokers=f"127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    with pytest.raises(OperationError, match=r"^cannot connect to Kafka at 127\.0\.0\.1:"):
        await topic_ids(settings, ["t"])


async def test_over_sasl_ssl(kafka_secure: LocalCluster) -> None:
    env = kafka_secure.client_env
    settings = load_settings(**{k.removeprefix("SLUICE_").lower(): v for k, v in env.items()})
    name = unique("ids-secure")
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    found = await id_when(settings, name, present=True)
    assert found is not None and len(parse_topic_id(found)) == 16
