"""Throw-away Redis servers on loopback ports (``redis-server`` processes in a temp dir): a
single node with replicas and optionally Redis Sentinels (:class:`ReplicatedRedis`), or a Redis
Cluster (:class:`LocalCluster`). What ``python -m bench --shards`` compares and what the cluster
and Sentinel integration tests run against (``tests/support/cluster.py`` scales the waits to the
test suite).

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
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "LocalCluster",
    "RedisServer",
    "ReplicatedRedis",
    "SentinelServer",
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
        log = directory / f"redis-{port}.log"
        command = redis_server_command(port, directory, "--logfile", str(log), *extra)
        self._spawn(port, log, command, scale)

    def _spawn(self, port: int, log: Path, command: list[str], scale: float) -> None:
        self.port = port
        self.scale = scale
        self.log = log
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

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
            replication = [n.info("replication") for n in live]
            links = [
                r.get("master_link_status", "up") for r in replication if r.get("role") == "slave"
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


class SentinelServer(RedisServer):
    """One Redis Sentinel on 127.0.0.1 watching ``service`` (the primary on ``primary_port``)."""

    def __init__(
        self,
        directory: Path,
        port: int,
        service: str,
        primary_port: int,
        *,
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        scale: float = 1.0,
    ) -> None:
        log = directory / f"sentinel-{port}.log"
        conf = directory / f"sentinel-{port}.conf"  # Sentinel rewrites it with what it learns
        conf.write_text(
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
        )
        command = ["redis-server", str(conf), "--sentinel", "--port", str(port)]
        command += ["--bind", "127.0.0.1", "--dir", str(directory), "--logfile", str(log)]
        self._spawn(port, log, command, scale)


class ReplicatedRedis:
    """A single-node Redis with ``replicas`` replicas (``--replicaof``) and, optionally,
    ``sentinels`` Redis Sentinels that fail it over (quorum: a majority of them)."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        sentinels: int = 0,
        service: str = "voicegrid",
        down_after_ms: int = 1000,
        scale: float = 1.0,
    ) -> None:
        self.directory = directory
        self.replicas = replicas
        self.sentinel_count = sentinels
        self.service = service
        self.down_after_ms = down_after_ms
        self.scale = scale
        self.nodes: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []

    @property
    def primary(self) -> RedisServer:
        """The node that is primary now (Sentinel's answer when there are Sentinels)."""
        if not self.sentinels:
            return self.nodes[0]
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            answer = sentinel.cli("sentinel", "get-master-addr-by-name", self.service).split()
            if len(answer) == 2 and answer[1].isdigit():
                return next(n for n in self.nodes if n.port == int(answer[1]))
        raise RuntimeError(f"no Sentinel names a primary for {self.service!r}")

    @property
    def url(self) -> str:
        """``redis+sentinel://`` naming every Sentinel, or the primary's ``redis://``."""
        if not self.sentinels:
            return self.nodes[0].url
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> ReplicatedRedis:
        try:
            primary = RedisServer(self.directory, cluster_port(), scale=self.scale)
            self.nodes.append(primary)
            primary.wait_serving()
            for _ in range(self.replicas):
                replica = RedisServer(
                    self.directory,
                    cluster_port(),
                    "--replicaof",
                    "127.0.0.1",
                    str(primary.port),
                    scale=self.scale,
                )
                self.nodes.append(replica)
                replica.wait_serving()
            self._wait(self._replicas_in_sync, "the replicas did not sync")
            for _ in range(self.sentinel_count):
                sentinel = SentinelServer(
                    self.directory,
                    cluster_port(),
                    self.service,
                    primary.port,
                    quorum=self.sentinel_count // 2 + 1,
                    down_after_ms=self.down_after_ms,
                    scale=self.scale,
                )
                self.sentinels.append(sentinel)
                sentinel.wait_serving()
            self._wait(self._sentinels_see_replicas, "the Sentinels did not find the replicas")
        except BaseException:
            self.stop()
            raise
        return self

    def _replicas_in_sync(self) -> bool:
        return all(n.info("replication").get("master_link_status") == "up" for n in self.nodes[1:])

    def _sentinels_see_replicas(self) -> bool:
        for sentinel in self.sentinels:
            info = sentinel.info("sentinel")
            status = next((v for k, v in info.items() if k.startswith("master")), "")
            if f"slaves={self.replicas}," not in status or "status=ok" not in status:
                return False
        return True

    def _wait(self, ready: Callable[[], bool], what: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within * self.scale
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {within * self.scale:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                server.kill()
