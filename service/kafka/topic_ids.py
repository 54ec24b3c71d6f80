"""Topic ids (KIP-516): tell a deleted and re-created topic from the one that had its name.

Kafka gives every topic a random 16-byte id at creation; deleted and created again under the
same name, it gets a new one. Positions stored for the old incarnation mean nothing for the new
one, so they must be stored with the id they belong to and checked against :func:`topic_ids`.

aiokafka 0.14 speaks only Metadata v0-v5 (no ids), so Metadata **v12** is defined here on its
protocol classes, fields as in Kafka's MetadataRequest.json/MetadataResponse.json. v12 is the
newest Kafka 3.9 serves (3.1+ do; 4.x serves v0-v13); v10-v11 also carry the id, but with the
deprecated cluster-authorized-operations fields. A broker without v12 gets a one-line
:class:`OperationError` instead of a protocol error. Ids are returned as Kafka's tools print
them (``TopicId:`` of ``kafka-topics.sh --describe``): see :func:`format_topic_id`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from io import BytesIO
from typing import Any

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.kafka.connect import connection_error, operation_error, retry_retriable
from service.settings import Settings

METADATA_API_KEY = 3
METADATA_VERSION = 12
ZERO_ID = bytes(16)  # Kafka's Uuid.ZERO_UUID: "no id" (e.g. a topic that does not exist)

_UNKNOWN_TOPIC_OR_PARTITION = 3
_INVALID_TOPIC = 17  # a name no topic can have: it does not exist either
_ID_TEXT = re.compile(r"^[A-Za-z0-9_-]{22}$")


def _sixteen(raw: bytes) -> bytes:
    if len(raw) != 16:
        raise ValueError(f"a topic id (uuid) has 16 bytes, not {len(raw)}")
    return raw


def format_topic_id(raw: bytes) -> str:
    """The 16 id bytes as Kafka's ``Uuid.toString()`` writes them: unpadded base64url, 22 chars."""
    return base64.urlsafe_b64encode(_sixteen(raw)).decode("ascii").rstrip("=")


def parse_topic_id(text: str) -> bytes:
    """The 16 bytes of an id written by :func:`format_topic_id` (or Kafka); ValueError if malformed."""
    if not _ID_TEXT.match(text):
        raise ValueError(f"not a Kafka topic id (22 base64url characters): {text!r}")
    raw = base64.urlsafe_b64decode(text + "==")
    if format_topic_id(raw) != text:  # non-zero bits in the unused tail of the last character
        raise ValueError(f"not a canonical Kafka topic id: {text!r}")
    return raw


class Uuid(AbstractType[bytes]):  # type: ignore[misc]
    """Kafka's ``uuid`` wire type: 16 raw bytes (high then low long, big-endian), no length prefix."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return _sixteen(value)

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        return _sixteen(data.read(16))  # fewer bytes: the buffer ran out


class MetadataResponseV12(Response):  # type: ignore[misc]
    API_KEY = METADATA_API_KEY
    API_VERSION = METADATA_VERSION
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True  # request header v2 and response header v1 (both with tagged fields)
    API_KEY = METADATA_API_KEY
    API_VERSION = METADATA_VERSION
    RESPONSE_TYPE = MetadataResponseV12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdsRequest(Request[MetadataRequestV12]):  # type: ignore[misc]
    """Metadata v12 for named topics, never auto-creating them; refuses brokers without v12."""

    API_KEY = METADATA_API_KEY

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)

    def build(self, request_struct_class: type[MetadataRequestV12]) -> MetadataRequestV12:
        topics: list[tuple[bytes, str, dict[int, bytes]]] = [(ZERO_ID, n, {}) for n in self.names]
        return request_struct_class(topics, False, False, {})

    def prepare(self, versions: dict[int, tuple[int, int]]) -> MetadataRequestV12:
        """aiokafka calls this with the versions the connection negotiated (ApiVersions)."""
        low, high = versions.get(METADATA_API_KEY, (-1, -1))
        if not low <= METADATA_VERSION <= high:
            offered = f"v{low}-v{high}" if high >= 0 else "none"
            raise OperationError(
                f"the broker cannot report topic ids: it serves Metadata {offered}, sluice needs "
                f"v{METADATA_VERSION} (Kafka 3.1 or newer)"
            )
        return self.build(MetadataRequestV12)


def ids_from_response(response: Any) -> dict[str, str]:
    """Name -> id of the topics in a decoded v12 response that exist; raises on other errors.

    Unknown (and invalid) names are left out. A retriable topic error raises its aiokafka
    exception so that the caller retries; any other one an :class:`OperationError`.
    """
    from aiokafka.errors import for_code

    ids: dict[str, str] = {}
    for code, name, topic_id, *_ in response.topics:
        if code in (_UNKNOWN_TOPIC_OR_PARTITION, _INVALID_TOPIC):
            continue
        if code:
            error = for_code(code)
            if error.retriable:
                raise error(f"topic {name!r}")
            raise OperationError(f"cannot read the id of topic {name!r}: {error.__name__}")
        if topic_id != ZERO_ID:
            ids[name] = format_topic_id(topic_id)
    return ids


async def request_topic_ids(client: Any, names: list[str]) -> dict[str, str]:
    """One Metadata v12 round trip through a bootstrapped aiokafka ``client`` to any broker."""
    from aiokafka.errors import NoBrokersAvailable

    node_id = client.get_random_node()
    if node_id is None:
        raise NoBrokersAvailable("the cluster metadata lists no broker")
    return ids_from_response(await client.send(node_id, TopicIdsRequest(names)))


async def topic_ids(settings: Settings, topics: Iterable[str]) -> dict[str, str]:
    """The id of each of ``topics`` that exists (absent ones are left out, never auto-created).

    Retriable failures (broker moving, topic being created) are retried for a few seconds;
    what remains becomes a one-line :class:`OperationError` (or ConfigError for a client
    misconfiguration found while connecting).
    """
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    client = AIOKafkaClient(**client_kwargs(settings, client_id=f"{settings.app_id}-topic-ids"))
    try:
        try:
            await client.bootstrap()
        except KafkaError as exc:
            raise await connection_error(exc, settings) from None
        try:
            return await retry_retriable(lambda: request_topic_ids(client, names))
        except (KafkaError, TimeoutError) as exc:
            raise operation_error(exc, settings) from None
    finally:
        await client.close()
