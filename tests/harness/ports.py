"""Loopback ports: pick a free one, wait for one to answer."""

from __future__ import annotations

import random
import socket
import time

LOOPBACK_HOST = "127.0.0.1"
_FIRST_CHOSEN_PORT = 20000  # above the well-known and most registered service ports
_PICK_ATTEMPTS = 50
_random = random.SystemRandom()  # not the test's seeded `random`: parallel runs must differ


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port the kernel considers free right now on `host`.

    The port is released before returning, and whoever uses it binds it a
    moment later (a gateway or redis-server starting up). To keep that gap
    from racing the rest of the machine, the port is picked at random *below*
    the kernel's ephemeral range: outgoing connections (this suite makes
    thousands) and `bind(0)` callers only ever take ports inside that range,
    so they cannot grab it meanwhile. Falls back to `bind(0)` if no port
    below the range is free.
    """
    low, _high = _ephemeral_port_range()
    candidates = range(_FIRST_CHOSEN_PORT, low)
    for _ in range(_PICK_ATTEMPTS if candidates else 0):
        port = _random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def is_port_open(port: int, host: str = LOOPBACK_HOST, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_port_closed(port: int, host: str = LOOPBACK_HOST, timeout_s: float = 10.0) -> bool:
    """Wait until nothing accepts on host:port; False if still open at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_port_open(port, host, timeout_s=0.2):
            return True
        time.sleep(0.05)
    return False
