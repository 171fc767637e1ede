"""Fault suite, gateway: hostile callers against a gateway on real Redis with a real worker.

A live session's caller keeps receiving while other callers throw hypothesis-generated attach
query strings (and the positions that used to stall every session on the gateway) and
hypothesis-generated messages at the same gateway: every refusal is an HTTP 4xx or an ``error``
message, never a 500, a 1011 or a stalled neighbour.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ingress.gateway import Gateway
from ingress.settings import GatewaySettings
from providers.simulator import OpenAISimulator

from ...support.timing import scaled
from .faultkit import SCRIPT, draw, fault_ledger, json_values, numbered_frame, record  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

QUERIES = 120
MESSAGES = 200

_value = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"[0-9]{1,25}-[0-9]{1,25}", fullmatch=True),
    st.sampled_from(["99999999999999999999-0", "\u0661-\u0661", "\u00b2", "1-\u00b2", "-1", ""]),
)
_queries = st.lists(
    st.tuples(st.sampled_from(["after", "skip", "x", "after", "skip"]), _value), max_size=3
).map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs))
_json = json_values(max_size=3)
_messages = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["tool.response", "config.update", "response.request", "ping", "bogus", ""]
            )
        },
        optional={
            "id": st.one_of(st.text(max_size=300), st.integers(-(2**63), 2**63 - 1), _json),
            "responses": _json,
            "config": _json,
            "instruction": _json,
            "extra": _json,
        },
    ).map(orjson.dumps),
    _json.map(orjson.dumps),
    st.binary(max_size=2000),  # audio of any length (and not JSON)
    st.text(max_size=100),  # text that is rarely JSON
)


class Listener:
    """A gateway caller that counts what it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.texts: list[dict[str, Any]] = []
        self.binary = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.binary += 1
                else:
                    self.texts.append(orjson.loads(message))


async def test_hostile_callers_never_harm_a_live_session_on_the_same_gateway(
    workers: Any, redis_url: str, namespace: str
) -> None:
    queries = [
        "after=99999999999999999999-0",
        "after=%D9%A1-%D9%A1",
        "after=1-0&skip=%C2%B2",
        *draw(_queries, QUERIES),
    ]
    messages = draw(_messages, MESSAGES)
    async with OpenAISimulator(SCRIPT, host="127.0.0.1", port=0) as sim:
        worker = workers("a", sim.url)
        await worker.wait_ready()
        settings_ = GatewaySettings(redis_url=redis_url, namespace=namespace, metrics_port=0)
        gateway = Gateway(settings_, host="127.0.0.1", port=0, start_timeout_s=2.0)
        await gateway.start()
        url = f"ws://127.0.0.1:{gateway.port}/v1/sessions"
        try:
            live = Listener(await connect(url, open_timeout=5))
            await live.ws.send(
                orjson.dumps({"type": "session.start", "provider": "openai", "model": "m"}).decode()
            )
            async with asyncio.timeout(scaled(20)):
                while not any(t["type"] == "session.started" for t in live.texts):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            sid = next(t for t in live.texts if t["type"] == "session.started")["session_id"]
            flowing = asyncio.create_task(_talk(live, sim))

            statuses: dict[int, int] = {}
            for query in queries:  # attach to a session that is not the live one's
                status = await _attach_status(f"{url}/other-{namespace}?{query}")
                statuses[status] = statuses.get(status, 0) + 1
            attached = await _attach_status(f"{url}/{sid}?after=99999999999999999999-0")

            fuzz = Listener(await connect(url, open_timeout=5))
            for message in messages:
                await fuzz.ws.send(message)
            pinger = Listener(await connect(url, open_timeout=5))
            opened = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                while time.monotonic() - opened < 5:
                    await pinger.ws.send('{"type": "ping"}')
                    await asyncio.sleep(0.2)
            await asyncio.wait_for(pinger.task, 5)
            pinger_closed = (pinger.ws.close_code, round(time.monotonic() - opened, 2))

            sent, arrived = await flowing
            # and it still receives: a pong needs the gateway's shared read of output streams
            await live.ws.send('{"type": "ping", "id": "after-the-storm"}')
            async with asyncio.timeout(scaled(10)):
                while not any(t.get("id") == "after-the-storm" for t in live.texts):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            pong = next(t for t in live.texts if t.get("id") == "after-the-storm")
            fuzz_errors = [t for t in fuzz.texts if t["type"] == "error"]
            record(
                "gateway_hostile_callers",
                query_cases=len(queries),
                http_statuses=statuses,
                message_cases=len(messages),
                error_replies=len(fuzz_errors),
                fuzz_socket_close=fuzz.ws.close_code,
                pinger_close=pinger_closed,
                neighbour_frames_sent=sent,
                neighbour_frames_at_provider=arrived,
            )
            # never a 500: refused before the upgrade, or (a valid position) 4404 after it
            assert set(statuses) <= {400, 404, 4404}, statuses
            assert attached == 400
            assert len(fuzz_errors) == len(messages)  # every message answered, none dropped
            assert fuzz.ws.close_code in (None, 1008)  # at most its start deadline ran out
            assert all(len(orjson.dumps(t)) < 2_000 for t in fuzz.texts)
            assert pinger_closed[0] == 1008 and pinger_closed[1] < 3.0
            assert arrived == sent, (sent, arrived)
            assert pong == {"type": "pong", "alive": True, "id": "after-the-storm"}
            await fuzz.ws.close()
            await live.ws.close()
        finally:
            await gateway.drain()
            await gateway.close()


async def _attach_status(url: str) -> int:
    """The HTTP status of an attach, or (upgraded) the close code the gateway ended it with."""
    try:
        ws = await connect(url, open_timeout=5)
    except InvalidStatus as exc:
        return int(exc.response.status_code)
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(10):
            async for _ in ws:
                pass
    return int(ws.close_code or 0)


async def _talk(live: Listener, sim: Any) -> tuple[int, int]:
    """The live caller sends numbered frames while the others misbehave; how many arrived."""
    marker = 250
    sent = 0
    for seq in range(250):
        await live.ws.send(numbered_frame(marker, seq, speech=False))
        sent += 1
        await asyncio.sleep(0.02)
    frames = [numbered_frame(marker, seq, speech=False) for seq in range(sent)]

    def count(s: Any) -> int:
        audio = b"".join(conn.audio_in for conn in s.connections)
        return sum(1 for frame in frames if frame in audio)

    with contextlib.suppress(Exception):
        await sim.wait_for(lambda s: count(s) == sent, timeout=10)
    return sent, count(sim)
