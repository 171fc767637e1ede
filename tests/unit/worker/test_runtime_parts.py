"""Unit tests of the worker's pure parts: conversation replay, Redis URLs, settings, health."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis.asyncio

from protocol import RealtimeSessionConfig
from protocol.errors import ConfigError
from redisio.connection import open_redis
from redisio.http import HealthServer
from redisio.lease import Lease
from redisio.settings import redact_url, sentinel_target
from worker.conversation import MAX_ITEMS, MAX_TEXT_BYTES, ConversationLog, replay_config
from worker.settings import WorkerSettings


def test_conversation_is_bounded_and_replayed_into_the_instructions() -> None:
    log = ConversationLog()
    log.add_message("user", "What is the weather in Paris?")
    log.add_tool_call("c1", "weather", {"city": "Paris"})
    log.add_tool_result("c1", {"temp": 21})
    log.add_message("assistant", "It is 21 degrees.")
    log.add_message("user", "   ")  # blank turns are not kept
    config = replay_config(RealtimeSessionConfig(instructions="Be brief."), log)
    assert config.instructions.startswith("Be brief.\n\n")
    assert 'weather({"city":"Paris"})' in config.instructions
    assert config.instructions.endswith("assistant: It is 21 degrees.")
    assert replay_config(RealtimeSessionConfig(), ConversationLog()).instructions == ""

    for n in range(500):
        log.add_message("user", f"turn {n} " + "x" * 100)
    assert len(log.items) <= MAX_ITEMS
    assert len(log.dumps()) <= MAX_TEXT_BYTES
    assert "turn 499" in log.items[-1]["text"] and not log.changed
    assert ConversationLog(log.items).items == log.items


@pytest.mark.parametrize(
    ("url", "db", "password", "ssl"),
    [
        ("redis://127.0.0.1:6379/0", 0, None, False),
        ("redis://:s3cret@redis.internal:6380/3", 3, "s3cret", False),
        ("rediss://user:s3cret@redis.example.com:6380/5", 5, "s3cret", True),
    ],
)
def test_redis_urls_with_password_tls_and_db(
    url: str, db: int, password: str | None, ssl: bool
) -> None:
    client = open_redis(url, queue="ns:queue")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["db"] == db and kwargs.get("password") == password
    is_ssl = issubclass(client.connection_pool.connection_class, redis.asyncio.SSLConnection)
    assert is_ssl is ssl
    assert client.default_queue_name == "ns:queue"
    assert "s3cret" not in redact_url(url)


def test_namespace_setting_is_validated() -> None:
    assert WorkerSettings.from_env({"VOICEGRID_NAMESPACE": "team-a"}).namespace == "team-a"
    with pytest.raises(ConfigError, match="namespace"):
        WorkerSettings.from_env({"VOICEGRID_NAMESPACE": "bad:ns"})


def test_a_lease_is_trusted_locally_only_until_most_of_its_ttl() -> None:
    lease = Lease(keys=None, epoch=4, worker_id="w1", ttl_s=3.0)  # type: ignore[arg-type]
    assert lease.token == "4:w1"
    sent = time.monotonic()
    lease.renewed(sent)
    assert lease.locally_valid(sent + 2.3)
    assert not lease.locally_valid(sent + 2.5)


def _runtime(**changes: object) -> SimpleNamespace:
    base = SimpleNamespace(
        draining=False,
        overloaded=False,
        sessions={},
        settings=WorkerSettings(redis_url="redis://x", max_sessions=2),
        health=SimpleNamespace(reachable=lambda: True),
        loop_tick=time.monotonic(),
    )
    return SimpleNamespace(**{**vars(base), **changes})


def test_readiness_and_health_routes() -> None:
    server = HealthServer(_runtime(), port=0)  # type: ignore[arg-type]
    assert server.route("/readyz") == (200, "text/plain", b"ready: 0/2 sessions\n")
    assert server.route("/healthz")[0] == 200
    assert server.route("/metrics")[0] == 200
    assert server.route("/nope")[0] == 404
    full = HealthServer(_runtime(sessions={"a": 1, "b": 2}), port=0)  # type: ignore[arg-type]
    assert full.route("/readyz")[:1] == (503,) and b"full" in full.route("/readyz")[2]
    draining = HealthServer(_runtime(draining=True), port=0)  # type: ignore[arg-type]
    assert draining.route("/readyz")[2] == b"draining\n"
    down = HealthServer(  # type: ignore[arg-type]
        _runtime(health=SimpleNamespace(reachable=lambda: False)), port=0
    )
    assert down.route("/readyz")[2] == b"redis unreachable\n"
    stalled = HealthServer(_runtime(loop_tick=time.monotonic() - 60), port=0)  # type: ignore[arg-type]
    assert stalled.route("/healthz")[0] == 503


def test_cluster_and_queue_urls_are_read_and_checked() -> None:
    cluster = "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000"
    settings = WorkerSettings.from_env(
        {"REDIS_URL": cluster, "VOICEGRID_QUEUE_URL": "redis://q:6379/1"}
    )
    assert settings.cluster and settings.queue_redis_url == "redis://q:6379/1"
    assert settings.key_layout().buckets == 24
    single = WorkerSettings.from_env({"REDIS_URL": "redis://r:6379/0"})
    assert not single.cluster and single.queue_redis_url == "redis://r:6379/0"
    assert single.key_layout().buckets == 0
    with pytest.raises(ConfigError, match="VOICEGRID_QUEUE_URL must name"):
        WorkerSettings.from_env({"REDIS_URL": cluster})
    with pytest.raises(ConfigError, match=r"VOICEGRID_QUEUE_URL=.*single-node") as info:
        WorkerSettings.from_env(
            {"REDIS_URL": cluster, "VOICEGRID_QUEUE_URL": "redis+cluster://:pw@q:1"}
        )
    assert "pw" not in str(info.value)
    with pytest.raises(ConfigError, match="VOICEGRID_CLUSTER_BUCKETS"):
        WorkerSettings.from_env(
            {
                "REDIS_URL": cluster,
                "VOICEGRID_QUEUE_URL": "redis://q",
                "VOICEGRID_CLUSTER_BUCKETS": "0",
            }
        )
    with pytest.raises(ConfigError, match=r"REDIS_URL=.*redis\+cluster://host:port"):
        WorkerSettings.from_env({"REDIS_URL": "http://r:6379"})


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7000",
        "rediss+cluster://user:s3cret@a:1,b:2/0",
        "redis://h:6379/0?password=s3cret",
        "redis://user:s3cret@h",
        "redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster/2",
        "redis+sentinel://s1:26379/mymaster?sentinel_password=s3cret",
    ],
)
def test_passwords_are_redacted_from_cluster_urls_too(url: str) -> None:
    shown = redact_url(url)
    assert "s3cret" not in shown and "***" in shown


def test_cluster_urls_become_seed_nodes_and_bad_ones_name_the_value() -> None:
    from redisio.cluster import _cluster_nodes

    nodes, options = _cluster_nodes("rediss+cluster://u:p%40w@10.0.0.1:7000,[::1]:7001")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001)]
    assert options == {"username": "u", "password": "p@w", "ssl": True}
    for bad, says in (
        ("redis+cluster://h1:7000,h2", "node 'h2' is not host:port"),
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("redis+cluster://:pw@h1:7000?db=2", "query option 'db'"),
    ):
        with pytest.raises(ConfigError, match=says) as info:
            _cluster_nodes(bad)
        assert "pw" not in str(info.value).replace("password", "")


def test_sentinel_urls_name_the_sentinels_the_service_and_the_primary_s_credentials() -> None:
    target = sentinel_target(
        "rediss+sentinel://u:p%40w@10.0.0.1:26379,[::1]:26380/my%2Dprimary/3?sentinel_password=sp"
    )
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (target.service, target.db, target.ssl) == ("my-primary", 3, True)
    assert (target.username, target.password, target.sentinel_password) == ("u", "p@w", "sp")
    assert "p@w" not in repr(target) and "password" not in repr(target)
    plain = sentinel_target("redis+sentinel://s:26379/primary")
    assert (plain.db, plain.password, plain.ssl) == (0, None, False)
    for bad, says in (
        ("redis+sentinel://:pw@s:26379", "the path must name the service"),
        ("redis+sentinel://:pw@s:26379/", "the path must name the service"),
        ("redis+sentinel://:pw@s/primary", "Sentinel 's' is not host:port"),
        ("redis+sentinel://:pw@s:26379/primary/x", "database 'x' is not a number"),
        ("redis+sentinel://:pw@s:26379/primary/0/1", "the path must name the service"),
        ("redis+sentinel://:pw@s:26379/primary?db=1", "query option 'db' is not supported"),
    ):
        with pytest.raises(ConfigError, match=says) as info:
            sentinel_target(bad)
        message = str(info.value)
        assert "REDIS_URL=" in message and "redis+sentinel://[user:password@]host:port" in message
        assert ":pw@" not in message


def test_sentinel_urls_are_accepted_and_checked_for_both_redis_urls() -> None:
    sentinel = "redis+sentinel://:pw@s1:26379,s2:26379/vg/1"
    single = WorkerSettings.from_env({"REDIS_URL": sentinel})
    assert not single.cluster and single.queue_redis_url == sentinel
    cluster = WorkerSettings.from_env(
        {"REDIS_URL": "redis+cluster://c:7000", "VOICEGRID_QUEUE_URL": sentinel}
    )
    assert cluster.cluster and cluster.queue_redis_url == sentinel
    with pytest.raises(ConfigError, match=r"VOICEGRID_QUEUE_URL=.*the path must name") as info:
        WorkerSettings.from_env(
            {
                "REDIS_URL": "redis+cluster://c:7000",
                "VOICEGRID_QUEUE_URL": "redis+sentinel://:pw@s:1",
            }
        )
    assert ":pw@" not in str(info.value)
    with pytest.raises(ConfigError, match=r"REDIS_URL=.*is not host:port"):
        WorkerSettings.from_env({"REDIS_URL": "redis+sentinel://s/vg"})


async def test_a_sentinel_url_opens_a_sentinel_managed_pool_that_packs_with_hiredis() -> None:
    from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

    from redisio.resp import FastPackMixin

    redis = open_redis("rediss+sentinel://:pw@s1:26379,s2:26380/vg/2", queue="q")
    pool = redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "vg"
    assert issubclass(pool.connection_class, FastPackMixin)
    assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
    hosts = [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels]
    assert hosts == [26379, 26380]
    await redis.aclose()
