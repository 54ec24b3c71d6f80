"""Reading the producer's input without blocking the event loop.

A blocking ``read`` on the loop's thread would stall aiokafka's sender too: typed lines
would not reach Kafka until the next line arrived. A daemon thread reads instead and hands
chunks over through a small bounded queue (back-pressure: a fast file cannot outrun a slow
broker by more than a few chunks). ``os.read`` (or ``read1``) returns as soon as *some* bytes
are there, so a terminal delivers each line when Enter is pressed while a file is read in
large blocks.
The thread is a daemon because a read blocked on a terminal can never be interrupted: it
must not keep the process alive after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable
from typing import Protocol

CHUNK_SIZE = 1 << 16


class ChunkSource(Protocol):
    def read1(self, size: int = ..., /) -> bytes: ...


class ChunkReader:
    """``await read()`` gives the next chunk of ``source``; ``b""`` means end of input."""

    def __init__(self, source: ChunkSource, *, chunk_size: int = CHUNK_SIZE, depth: int = 8) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(maxsize=depth)
        self._loop = asyncio.get_running_loop()
        self._eof = False
        threading.Thread(target=self._run, name="sluice-input", daemon=True).start()

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at end of input (and on every later call)."""
        if self._eof:
            return b""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
        return item

    def _read_function(self) -> Callable[[int], bytes]:
        """``os.read`` on the file descriptor when there is one, else the object's ``read1``.

        The descriptor, not the BufferedReader: a read blocked inside the buffered object holds
        its lock, and when the interpreter then exits (Ctrl-C on a terminal) and touches
        ``sys.stdin`` it aborts with "could not acquire lock ... daemon threads".
        """
        fileno = getattr(self._source, "fileno", None)
        if fileno is not None:
            try:
                return functools.partial(os.read, fileno())
            except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
                pass
        return self._source.read1

    def _run(self) -> None:
        read = self._read_function()
        try:
            while True:
                chunk = read(self._chunk_size)
                self._hand_over(chunk)
                if not chunk:
                    return
        except _LoopGone:
            return
        except Exception as exc:
            try:
                self._hand_over(exc)
            except _LoopGone:
                return

    def _hand_over(self, item: bytes | BaseException) -> None:
        """Put ``item`` on the queue from this thread, waiting while it is full."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
            future.result()
        except (RuntimeError, concurrent.futures.CancelledError) as exc:
            # RuntimeError: the loop is closed; cancelled: it is shutting down.
            raise _LoopGone from exc


class _LoopGone(Exception):
    """The event loop stopped while the reader thread still had data for it."""
