"""A tiny blocking HTTP/1.1 client with exact control over connections.

Process-model tests need to know which worker a connection reached and keep
it open across a kill or a roll; an HTTP library's pool hides both.
"""

from __future__ import annotations

import socket

import orjson

from .ports import LOOPBACK_HOST


class Connection:
    """One keep-alive HTTP/1.1 connection (Content-Length responses only)."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection((LOOPBACK_HOST, port), timeout=timeout_s)
        self._buffer = b""

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the gateway")
        self._buffer += chunk

    def close(self) -> None:
        self.sock.close()


def worker_pid_of(connection: Connection) -> int:
    """The pid of the worker serving `connection` (needs `bench_routes`)."""
    status, body = connection.get("/bench/worker")
    assert status == 200
    return int(orjson.loads(body)["pid"])


def get_once(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET on a fresh connection, closed afterwards."""
    connection = Connection(port, timeout_s)
    try:
        return connection.get(path)
    finally:
        connection.close()
