"""Loopback ports: pick a free one, wait for one to answer."""

from __future__ import annotations

import socket
import time

LOOPBACK_HOST = "127.0.0.1"


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port the kernel considers free right now on `host`.

    The port is released before returning, so a race with another process is
    possible in theory; on a test machine the kernel hands out ephemeral ports
    round-robin, which makes an immediate clash very unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
