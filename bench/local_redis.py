"""Throw-away Redis servers on loopback ports (``redis-server`` processes in a temp dir): a
single node, or a Redis Cluster. What ``python -m bench --shards`` compares and what the cluster
integration tests run against (``tests/support/cluster.py`` scales the waits to the test suite).

``LocalCluster(directory).start()`` starts ``primaries`` primaries with ``replicas`` replicas
each (``--cluster-enabled yes``, no persistence, ``cluster-node-timeout`` small so a replica
takes over within a few seconds), joins them with ``redis-cli --cluster create``, and waits until
every node reports ``cluster_state:ok`` and every replica is in sync; ``stop()`` kills them all.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = [
    "LocalCluster",
    "RedisServer",
    "cluster_port",
    "have_redis_server",
    "redis_server_command",
]


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def redis_server_command(port: int, directory: Path, *extra: str) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port`` without persistence, working in ``directory``."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        *extra,
    ]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A loopback port that is free, and so is its cluster bus port (+10000)."""
    for _ in range(1000):
        port = random.randint(20000, 29999)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (``scale`` multiplies every wait)."""

    def __init__(self, directory: Path, port: int, *extra: str, scale: float = 1.0) -> None:
        self.port = port
        self.scale = scale
        self.log = directory / f"redis-{port}.log"
        self.proc = subprocess.Popen(
            redis_server_command(port, directory, "--logfile", str(self.log), *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout * self.scale,
            check=False,
        )
        return done.stdout.strip()

    def wait_serving(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within * self.scale
        while self.cli("ping", timeout=2) != "PONG":
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} does not answer: {self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-1500:]
        return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(signum)
            self.proc.wait(10 * self.scale)

    def info(self, section: str) -> dict[str, str]:
        return _fields(self.cli("info", section))

    def cluster_info(self) -> dict[str, str]:
        return _fields(self.cli("cluster", "info"))


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value:
            out[name] = value.strip()
    return out


class LocalCluster:
    """``primaries`` x (1 + ``replicas``) cluster nodes on loopback ports (see the module)."""

    def __init__(
        self,
        directory: Path,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        scale: float = 1.0,
    ) -> None:
        self.directory = directory
        self.scale = scale
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> LocalCluster:
        for _ in range(self.primaries * (1 + self.replicas)):
            port = cluster_port()
            self.nodes.append(
                RedisServer(
                    self.directory,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self.directory / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    # a shard that is down stops only its own slots (docs/operations.md)
                    "--cluster-require-full-coverage",
                    "no",
                    scale=self.scale,
                )
            )
        for node in self.nodes:
            node.wait_serving()
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60 * self.scale,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        self.wait_healthy()
        return self

    def wait_healthy(self, within: float = 30.0) -> None:
        """Every live node says ``cluster_state:ok`` and agrees on the primaries; every live
        replica's link to its primary is up."""
        deadline = time.monotonic() + within * self.scale
        while True:
            live = [n for n in self.nodes if n.alive()]
            states = [n.cluster_info().get("cluster_state") for n in live]
            links = [
                n.info("replication").get("master_link_status", "up")
                for n in live
                if n.info("replication").get("role") == "slave"
            ]
            if all(s == "ok" for s in states) and all(link == "up" for link in links):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy: states {states}, replica links {links}")
            time.sleep(0.1)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def any_live(self) -> RedisServer:
        return next(n for n in self.nodes if n.alive())

    def primary_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        slot = int(self.any_live().cli("cluster", "keyslot", key))
        for line in self.any_live().cli("cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if not low.isdigit():
                    continue
                if int(low) <= slot <= int(high or low):
                    return self.node(int(fields[1].split(":")[1].split("@")[0]))
        raise RuntimeError(f"no primary serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return node.cli("cluster", "myid")

    def primary_nodes(self) -> list[RedisServer]:
        return [
            n for n in self.nodes if n.alive() and n.info("replication").get("role") == "master"
        ]

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
