"""The cluster pumps' routing (``redisio.cluster``) without a cluster: redirections per command,
node muxes that coalesce, and the ingress writer re-sending what a moving slot refused.
The same paths run against a real cluster in ``tests/integration/cluster/``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from redis.exceptions import AskError, MovedError, TryAgainError

from ingress.client import IngressWriter
from redisio.cluster import ClusterRouter, NodeMux, hash_tag
from redisio.connection import RedisHealth


class FakeMux:
    """Answers each command from ``script[node][command]`` (a list: one answer per call)."""

    def __init__(self, name: str, script: dict[tuple[Any, ...], list[Any]]) -> None:
        self.name = name
        self.script = script
        self.calls: list[list[tuple[Any, ...]]] = []

    async def call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.calls.append(list(commands))
        return [self.script[c].pop(0) if c in self.script else b"OK" for c in commands]


class FakeTopology:
    def __init__(self, owners: list[str]) -> None:
        self.owners = owners  # the owner of the slot, one per refresh
        self.refreshes = 0

    async def ready(self) -> None:
        return None

    def node_for_slot(self, slot: int) -> Any:
        return SimpleNamespace(name=self.owners[min(self.refreshes, len(self.owners) - 1)])

    def node_at(self, host: str, port: int) -> Any:
        return SimpleNamespace(name=f"{host}:{port}")

    async def refresh(self) -> None:
        self.refreshes += 1


def _router(topology: FakeTopology, muxes: dict[str, FakeMux]) -> ClusterRouter:
    router = ClusterRouter(topology, 0.0)  # type: ignore[arg-type]
    router._mux = lambda node: muxes[node.name]  # type: ignore[assignment, method-assign]
    return router


async def test_moved_commands_go_to_the_new_owner_and_asked_ones_with_asking() -> None:
    get, evalsha, xadd = ("GET", "k"), ("EVALSHA", "s", 1, "k"), ("XADD", "k", "*", "a", "1")
    old = FakeMux(
        "a:1",
        {
            get: [b"1"],
            evalsha: [MovedError("7 b:2")],  # MovedError is an AskError to redis-py
            xadd: [AskError("7 c:3")],
        },
    )
    new = FakeMux("b:2", {evalsha: [b"2"]})
    importer = FakeMux("c:3", {xadd: [b"1-1"]})
    topology = FakeTopology(["a:1", "b:2"])
    router = _router(topology, {"a:1": old, "b:2": new, "c:3": importer})

    replies = await router.call(7, [get, evalsha, xadd])

    assert replies == [b"1", b"2", b"1-1"]
    assert topology.refreshes == 1
    assert new.calls == [[evalsha]]  # only the moved command, not the asked one
    assert importer.calls == [[("ASKING",), xadd]]


async def test_a_redirection_that_persists_is_returned_as_the_reply() -> None:
    command = ("GET", "k")
    mux = FakeMux("a:1", {command: [MovedError("7 a:1") for _ in range(5)]})
    router = _router(FakeTopology(["a:1"]), {"a:1": mux})
    (reply,) = await router.call(7, [command])
    assert isinstance(reply, MovedError)
    assert len(mux.calls) == 4  # the first send and three redirections


class _Link:
    def __init__(self) -> None:
        self.rounds: list[list[tuple[Any, ...]]] = []

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.rounds.append(commands)
        await asyncio.sleep(0.01)
        return [b"ok"] * len(commands)

    async def close(self) -> None:
        return None


async def test_a_node_mux_sends_what_buckets_submit_meanwhile_in_one_round_trip() -> None:
    mux = NodeMux(SimpleNamespace(name="a:1", connection_class=None, connection_kwargs={}), 0.0)  # type: ignore[arg-type]
    link = _Link()
    mux._conn = link  # type: ignore[assignment]
    first = asyncio.create_task(mux.call([("A",)]))
    await asyncio.sleep(0.001)  # the first round is in flight
    rest = await asyncio.gather(mux.call([("B",), ("C",)]), mux.call([("D",)]))
    assert await first == [b"ok"]
    assert rest == [[b"ok", b"ok"], [b"ok"]]
    assert link.rounds == [[("A",)], [("B",), ("C",), ("D",)]]
    await mux.close()


async def test_the_ingress_writer_resends_what_a_moving_slot_refused_in_order() -> None:
    writer = IngressWriter(None, RedisHealth(), conn=_Link())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    batch = [({"n": str(i)}, futures[i]) for i in range(3)]
    client = object()
    retry = await writer._settle(
        [(client, batch)],  # type: ignore[list-item]
        [b"1-1", TryAgainError("TRYAGAIN"), b"1-3"],
        0.0,
    )
    assert futures[0].result() == "1-1"
    assert retry == [(client, batch[1:])]  # the refused entry and everything after it
    assert not futures[1].done() and not futures[2].done()


def test_hash_tags_are_read_as_redis_cluster_reads_them() -> None:
    assert hash_tag("ns:{vg3-50}:sid:in") == "vg3-50"
    assert hash_tag(b"ns:{a}") == "a"
    assert hash_tag("ns:{}:x") == "" and hash_tag("plain") == ""


class _Lane:
    """What a node poller sees of a reader lane."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.routed = False
        self.delivered: list[Any] = []
        self.reads = SimpleNamespace(busy=True, saw=self._saw)

    def _saw(self, entries: bool) -> None:
        self.reads.busy = entries

    def poll_command(self) -> tuple[Any, ...]:
        return ("XREAD", "COUNT", 10, "STREAMS", b"s", b"0-0")

    def deliver(self, reply: list[Any]) -> bool:
        self.delivered.append(reply)
        return bool(reply)


class _PollRouter:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.topology = FakeTopology(["n1"])

    async def call_node(self, node: Any, commands: list[Any]) -> list[Any]:
        reply = self.replies.pop(0)
        if reply == "hang":
            await asyncio.Event().wait()
        return [reply for _ in commands]


async def test_a_node_poller_delivers_then_hands_quiet_or_unreadable_buckets_back() -> None:
    from redisio.cluster import _NodePoller

    entries = [[b"s", [[b"1-0", [b"k", b"a"]]]]]
    router = _PollRouter([entries, [], b"not an XREAD reply", "hang"])
    poller = _NodePoller(router, SimpleNamespace(name="n1"))  # type: ignore[arg-type]
    quiet, broken = _Lane(), _Lane()
    poller.join("a", quiet)  # type: ignore[arg-type]
    await asyncio.wait_for(quiet.released.wait(), 1)
    # one round delivered its entries, the next found none: quiet, back to blocking on its own
    assert quiet.delivered == [[(b"s", [(b"1-0", {b"k": b"a"})])], []]
    assert not quiet.routed and "a" not in poller.lanes
    # a reply that is not what XREAD answers does not stop the poller: the lane reads it itself
    poller.join("b", broken)  # type: ignore[arg-type]
    await asyncio.wait_for(broken.released.wait(), 1)
    assert broken.routed and broken.delivered == []
    # a lane parked in a round that never answers is released when the poller is closed
    stuck = _Lane()
    poller.join("c", stuck)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    await asyncio.wait_for(poller.close(), 1)
    assert stuck.released.is_set()
