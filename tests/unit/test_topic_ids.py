"""Metadata v12 of service.kafka.topic_ids, byte for byte, without a broker.

The expected bytes are written out field by field from Kafka's MetadataRequest.json and
MetadataResponse.json (v12, flexible: compact arrays/strings are length+1 as unsigned varints,
every struct ends in a tagged-field section), not produced by the code under test.
"""

from __future__ import annotations

import base64
import struct
import uuid
from io import BytesIO

import pytest
from aiokafka.errors import LeaderNotAvailableError

from service.errors import OperationError
from service.kafka.topic_ids import (
    MetadataRequestV12,
    MetadataResponseV12,
    TopicIdsRequest,
    format_topic_id,
    ids_from_response,
    parse_topic_id,
)

ID_A = bytes(range(16))
ID_B = uuid.UUID("6f1e3c2a-9b7d-4e55-8a0c-1d2e3f405162").bytes


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def cstr(s: str | None) -> bytes:
    """COMPACT_(NULLABLE_)STRING; every length used here is below 127, so one varint byte."""
    if s is None:
        return b"\x00"
    data = s.encode()
    return bytes([len(data) + 1]) + data


def carray(*items: bytes) -> bytes:
    return bytes([len(items) + 1]) + b"".join(items)


NO_TAGS = b"\x00"


def partition(index: int, leader: int) -> bytes:
    return (
        i16(0) + i32(index) + i32(leader) + i32(7)  # error, index, leader, leader epoch
        + carray(i32(leader)) + carray(i32(leader)) + carray()  # replicas, isr, offline
        + NO_TAGS
    )  # fmt: skip


def topic(
    code: int, name: str | None, topic_id: bytes, partitions: list[bytes], tags: bytes = NO_TAGS
) -> bytes:
    return (
        i16(code) + cstr(name) + topic_id + b"\x00"  # is_internal false
        + carray(*partitions) + i32(-2147483648) + tags  # authorized operations: not requested
    )  # fmt: skip


def response_body(*topics: bytes) -> bytes:
    broker = i32(1) + cstr("127.0.0.1") + i32(9092) + cstr(None) + NO_TAGS
    return (
        i32(0) + carray(broker) + cstr("clusterid-xyz") + i32(1)  # throttle, brokers, cluster, controller
        + carray(*topics) + NO_TAGS
    )  # fmt: skip


def test_request_v12_bytes() -> None:
    request = TopicIdsRequest(["in", "lines"]).prepare({3: (0, 12)})
    assert isinstance(request, MetadataRequestV12)
    assert (request.API_KEY, request.API_VERSION, request.FLEXIBLE_VERSION) == (3, 12, True)
    expected = (
        carray(bytes(16) + cstr("in") + NO_TAGS, bytes(16) + cstr("lines") + NO_TAGS)
        + b"\x00"  # allow_auto_topic_creation = false
        + b"\x00"  # include_topic_authorized_operations = false
        + NO_TAGS
    )
    assert request.encode() == expected
    # Flexible request header v2: client id keeps its INT16 length, then a tagged-field section.
    header = request.build_request_header(correlation_id=7, client_id="sl")
    assert header.encode() == i16(3) + i16(12) + i32(7) + i16(2) + b"sl" + NO_TAGS


@pytest.mark.parametrize("versions", [{3: (0, 13)}, {3: (4, 12)}, {3: (12, 12)}])
def test_v12_chosen_whenever_offered(versions: dict[int, tuple[int, int]]) -> None:
    assert TopicIdsRequest(["t"]).prepare(versions).API_VERSION == 12


@pytest.mark.parametrize(
    ("versions", "offered"), [({3: (0, 9)}, "v0-v9"), ({3: (13, 15)}, "v13-v15"), ({18: (0, 3)}, "none")]
)
def test_broker_without_v12_is_a_clear_error(versions: dict[int, tuple[int, int]], offered: str) -> None:
    with pytest.raises(OperationError) as info:
        TopicIdsRequest(["t"]).prepare(versions)
    assert str(info.value) == (
        f"the broker cannot report topic ids: it serves Metadata {offered}, "
        "sluice needs v12 (Kafka 3.1 or newer)"
    )


def test_response_v12_decoded_through_the_flexible_header() -> None:
    # An unknown tagged field (tag 0, three bytes) inside a topic must be skipped, not misread.
    tagged = b"\x01" + b"\x00" + b"\x03" + b"abc"
    body = response_body(
        topic(0, "in", ID_A, [partition(0, 1), partition(1, 1)], tags=tagged),
        topic(3, "gone", bytes(16), []),
        topic(0, "lines", ID_B, [partition(0, 1)]),
    )
    frame = BytesIO(i32(42) + NO_TAGS + body)  # response header v1: correlation id + tags
    request = TopicIdsRequest(["in", "gone", "lines"]).prepare({3: (0, 12)})
    assert request.parse_response_header(frame).correlation_id == 42
    response = request.RESPONSE_TYPE.decode(frame)
    assert frame.read() == b"", "the whole body must be consumed"
    assert isinstance(response, MetadataResponseV12)
    assert response.cluster_id == "clusterid-xyz"
    assert response.brokers == [(1, "127.0.0.1", 9092, None, {})]
    first = response.topics[0]
    assert (first[0], first[1], first[2], first[3]) == (0, "in", ID_A, False)
    assert [p[1] for p in first[4]] == [0, 1]
    assert first[4][0][3] == 7  # leader epoch
    assert first[6] == {0: b"abc"}
    assert ids_from_response(response) == {"in": format_topic_id(ID_A), "lines": format_topic_id(ID_B)}


def test_topic_errors() -> None:
    invalid = MetadataResponseV12.decode(response_body(topic(17, "bad name!", bytes(16), [])))
    assert ids_from_response(invalid) == {}
    denied = MetadataResponseV12.decode(response_body(topic(29, "secret", bytes(16), [])))
    with pytest.raises(
        OperationError, match="cannot read the id of topic 'secret': TopicAuthorizationFailed"
    ):
        ids_from_response(denied)
    moving = MetadataResponseV12.decode(response_body(topic(5, "new", bytes(16), [])))
    with pytest.raises(LeaderNotAvailableError):  # retriable: the caller retries
        ids_from_response(moving)


def test_id_text_is_kafkas() -> None:
    # Kafka's Uuid.toString(): Base64.getUrlEncoder().withoutPadding() of the 16 big-endian bytes.
    assert format_topic_id(ID_A) == "AAECAwQFBgcICQoLDA0ODw"
    assert format_topic_id(bytes(16)) == "AAAAAAAAAAAAAAAAAAAAAA"  # Uuid.ZERO_UUID
    text = format_topic_id(ID_B)
    assert len(text) == 22
    assert text == base64.urlsafe_b64encode(ID_B).decode().rstrip("=")
    assert parse_topic_id(text) == ID_B
    assert parse_topic_id("AAECAwQFBgcICQoLDA0ODw") == ID_A


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAECAwQFBgcICQoLDA0OD",
        "AAECAwQFBgcICQoLDA0ODw=",
        "AAECAwQFBgcICQoLDA0OD+",
        "AAECAwQFBgcICQoLDA0ODx",
    ],
)
def test_parse_rejects_non_ids(text: str) -> None:
    with pytest.raises(ValueError):
        parse_topic_id(text)


def test_format_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        format_topic_id(bytes(15))
