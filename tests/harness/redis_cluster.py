"""A real three-master Redis Cluster on free loopback ports, for the cluster client's tests.

Each node is a redis-server in cluster mode in its own temp dir (its
nodes.conf lives there), without persistence. `redis-cli --cluster create`
splits the 16384 slots between the three, no replicas; `start()` returns
once every node reports `cluster_state:ok`.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from .lifecycle import ManagedService
from .ports import LOOPBACK_HOST, free_port
from .redis_server import RedisServer, RedisServerError, redis_command

CLUSTER_NODES = 3
CLUSTER_NODE_TIMEOUT_MS = 5000


class RedisClusterError(RuntimeError):
    """The cluster could not be created or did not become healthy in time."""


def _cluster_info(port: int) -> str:
    """CLUSTER INFO of one node as text ('' if the node does not answer)."""
    # redis_command returns only the first reply line (a bulk header), so the
    # whole reply is read with redis-cli instead.
    try:
        result = subprocess.run(
            ["redis-cli", "-h", LOOPBACK_HOST, "-p", str(port), "CLUSTER", "INFO"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.decode(errors="replace")


class RedisCluster(ManagedService):
    """Three cluster-mode redis-servers joined into one cluster; see the module docstring."""

    def __init__(self, *, binary: str = "redis-server", cli: str = "redis-cli") -> None:
        resolved_cli = shutil.which(cli)
        if resolved_cli is None:
            raise RedisClusterError(
                f"{cli!r} not found on PATH: run scripts/test.sh "
                "(it installs redis-server, which brings redis-cli)"
            )
        self.cli = resolved_cli
        self.host = LOOPBACK_HOST
        # The cluster bus port is chosen like the client port: by default it
        # is port + 10000, which can land in the kernel's ephemeral range and
        # be taken by any outgoing connection in the meantime.
        self.nodes = [
            RedisServer(
                binary=binary,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                    "--cluster-port", str(free_port()),
                ),
            )
            for _ in range(CLUSTER_NODES)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL; any node leads a client to the whole cluster."""
        return f"redis://{self.host}:{self.nodes[0].port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, create the cluster, wait until every node says cluster_state:ok."""
        try:
            for node in self.nodes:
                node.start()
            self._create(timeout_s)
            self._wait_healthy(timeout_s)
        except BaseException:
            self.close()
            raise

    def _create(self, timeout_s: float) -> None:
        addresses = [f"{self.host}:{port}" for port in self.ports]
        try:
            result = subprocess.run(
                [self.cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisClusterError(
                f"redis-cli --cluster create did not finish within {timeout_s:g} s"
                f"\n{self._log_tails()}"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise RedisClusterError(
                f"redis-cli --cluster create exited with status {result.returncode}:\n"
                f"{output}\n{self._log_tails()}"
            )

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            infos = {port: _cluster_info(port) for port in self.ports}
            if all("cluster_state:ok" in info for info in infos.values()):
                return
            if time.monotonic() > deadline:
                states = "\n".join(
                    f"  {port}: {info.strip()[:400] or '(no answer)'}"
                    for port, info in infos.items()
                )
                raise RedisClusterError(
                    f"the cluster did not report cluster_state:ok on every node within "
                    f"{timeout_s:g} s:\n{states}\n{self._log_tails()}"
                )
            time.sleep(0.1)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- redis-server :{node.port} log ---\n{node.log_tail()}" for node in self.nodes
        )

    def flush(self) -> None:
        """Empty every node (FLUSHALL on each; a cluster node only flushes its own slots)."""
        for node in self.nodes:
            reply = redis_command(node.port, "FLUSHALL")
            if reply != b"+OK":
                raise RedisServerError(f"FLUSHALL on port {node.port} answered {reply!r}")

    def close(self) -> None:
        """Stop every node and remove their temp dirs."""
        for node in self.nodes:
            node.close()
