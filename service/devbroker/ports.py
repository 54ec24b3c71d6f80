"""TCP port helpers for the local broker: is a port free, find free ones, wait for a listener.

Kafka binds its listeners with SO_REUSEADDR, so a port counts as free here when a socket with
SO_REUSEADDR can bind it: a leftover TIME_WAIT connection does not block Kafka, and must not
make us refuse a port either; a live listener (on 127.0.0.1 or 0.0.0.0) does block both.

Blocks of ports are drawn from below the kernel's ephemeral range, so that a client's outgoing
connection cannot take a port between the moment we find it free and the moment Kafka binds it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"

# Below Linux's default ephemeral range (32768-60999) and above most well-known services.
_BLOCK_LOW = 20000
_BLOCK_HIGH = 32000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a listener could bind ``host:port`` now (the answer may change a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free now: for one listener whose port nobody needs to guess."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def free_ports(count: int, host: str = HOST, exclude: frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct free ports from the kernel, none of them in ``exclude``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports and port not in exclude:
            ports.append(port)
    return ports


def _block_range() -> tuple[int, int]:
    """The range to draw blocks from, kept below the ephemeral range if it was lowered."""
    high = _BLOCK_HIGH
    try:
        low_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_ephemeral = high
    high = min(high, low_ephemeral - 1)
    low = min(_BLOCK_LOW, high - 1000)
    return max(low, 1024), high


def free_port_block(count: int, host: str = HOST, attempts: int = 200) -> int:
    """The first of ``count`` consecutive free ports (a base port for a ``count``-node cluster)."""
    low, high = _block_range()
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(low, high - count)
        if all(port_is_free(base + i, host) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high} on {host}")


def accepts_connections(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
