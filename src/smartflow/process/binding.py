"""The listening address: resolve it, bind it with SO_REUSEPORT, and tell
whether something else already listens there.

Every gateway worker binds its own socket after the fork, so the kernel
spreads connections over the workers and a worker that exits takes only its
own accept queue with it. The supervisor binds one more, never listening,
only to hold the port (and to learn it when port 0 was asked for).
"""

from __future__ import annotations

import socket
from typing import Any

PORT_PROBE_TIMEOUT_S = 0.3


def resolve_listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _canon, address = infos[0]
    return family, address


def bind_listener(host: str, port: int, *, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and SO_REUSEADDR).

    With `listen=False` the socket only holds the port: it takes no
    connections (Linux puts only listening sockets in the reuse-port group).
    """
    family, address = resolve_listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def is_something_listening(host: str, port: int) -> bool:
    """Whether a connection to host:port is accepted (a wildcard address is
    probed on loopback). SO_REUSEPORT would let us bind beside another
    process's listener and silently share its traffic, so we ask first."""
    try:
        family, address = resolve_listen_address(host, port)
        connect_to = address
        if family == socket.AF_INET and address[0] == "0.0.0.0":
            connect_to = ("127.0.0.1", port)
        elif family == socket.AF_INET6 and address[0] == "::":
            connect_to = ("::1", port, 0, 0)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(PORT_PROBE_TIMEOUT_S)
            return probe.connect_ex(connect_to) == 0
    except OSError:
        return False
