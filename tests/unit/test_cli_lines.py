"""The producer's input handling: line splitting across chunks, key separator, chunk reader."""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from service.kafka.chunk_reader import ChunkReader
from service.kafka.lines import LineSplitter, split_key


def _split(chunks: list[bytes]) -> list[bytes]:
    splitter = LineSplitter()
    out = [line for chunk in chunks for line in splitter.feed(chunk)]
    return out + list(splitter.finish())


def test_lines_straddling_chunks_are_joined() -> None:
    assert _split([b"ab", b"c\nd", b"e\n", b"f"]) == [b"abc", b"de", b"f"]


def test_final_newline_adds_no_empty_record_but_empty_lines_are_records() -> None:
    assert _split([b"a\n\nb\n"]) == [b"a", b"", b"b"]
    assert _split([b""]) == []


def test_carriage_return_and_binary_bytes_are_kept() -> None:
    assert _split([b"x\r\n\xff\x00\xfe\n"]) == [b"x\r", b"\xff\x00\xfe"]


@pytest.mark.parametrize(
    ("line", "sep", "expected"),
    [
        (b"k:v", b":", (b"k", b"v")),
        (b"k:v:w", b":", (b"k", b"v:w")),  # split at the first separator only
        (b":v", b":", (b"", b"v")),  # empty key is a key, not a null key
        (b"k:", b":", (b"k", b"")),
        (b"k=>v=>w", b"=>", (b"k", b"v=>w")),  # multi-byte separator
        (b"\xff\t\xfe", b"\t", (b"\xff", b"\xfe")),
    ],
)
def test_split_key(line: bytes, sep: bytes, expected: tuple[bytes, bytes]) -> None:
    assert split_key(line, sep) == expected


def test_line_without_separator_is_an_error() -> None:
    with pytest.raises(ValueError):
        split_key(b"no separator here", b":")


def test_chunk_reader_reads_everything_then_eof() -> None:
    data = os.urandom(300_000)

    async def main() -> bytes:
        reader = ChunkReader(io.BufferedReader(io.BytesIO(data)), chunk_size=4096, depth=2)
        parts = []
        while chunk := await reader.read():
            parts.append(chunk)
        assert await reader.read() == b""
        return b"".join(parts)

    assert asyncio.run(main()) == data


def test_chunk_reader_hands_over_read_errors() -> None:
    class Broken:
        def read1(self, size: int = -1, /) -> bytes:
            raise OSError("disk on fire")

    async def main() -> None:
        reader = ChunkReader(Broken())
        with pytest.raises(OSError, match="disk on fire"):
            await reader.read()

    asyncio.run(main())


def test_chunk_reader_on_a_pipe_gets_lines_as_they_are_written() -> None:
    """A real descriptor (read with os.read): each write arrives without waiting for more."""
    read_fd, write_fd = os.pipe()

    async def main(source: io.BufferedReader) -> list[bytes]:
        reader = ChunkReader(source)
        os.write(write_fd, b"first\n")
        got = [await asyncio.wait_for(reader.read(), 5)]
        os.write(write_fd, b"second\n")
        got.append(await asyncio.wait_for(reader.read(), 5))
        os.close(write_fd)
        got.append(await asyncio.wait_for(reader.read(), 5))
        return got

    with open(read_fd, "rb") as source:
        assert asyncio.run(main(source)) == [b"first\n", b"second\n", b""]
