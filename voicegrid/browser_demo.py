"""``voicegrid demo --browser``: talk to a simulated agent from a browser tab.

Everything runs in this process: the provider simulator, an embedded Redis (or ``REDIS_URL``), a
worker, and the gateway serving the page at ``/demo/``. This module is also the documented
*backend example* of ``docs/telephony.md``: it creates the session itself (config, a tool),
answers the tool calls on its own ``RedisRealtimeClient``, and mints the media token that lets
the page attach to that session; the page carries only audio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ingress import RedisRealtimeClient, mint_media_token
from ingress.gateway import Gateway
from ingress.settings import GatewaySettings
from protocol import RealtimeToolResponse, ToolCallEvent, TranscriptEvent, VoicegridError

from .demo import DEFAULT_MODELS, _distributed, _provider_endpoint, demo_config, lookup_weather
from .runloop import stop_on_signals

__all__ = ["BrowserDemo", "browser_demo", "run_browser"]

log = logging.getLogger("voicegrid.demo")

#: The printed link stays usable this long (a person opens it by hand; a phone gets 60 s).
LINK_TTL_S = 600.0


@dataclass
class BrowserDemo:
    """A running browser demo: the gateway, the backend's client and the media token secret."""

    gateway: Gateway
    backend: RedisRealtimeClient
    secret: str
    host: str

    @property
    def session_id(self) -> str:
        assert self.backend.session_id is not None
        return self.backend.session_id

    def page_url(self, ttl_s: float = LINK_TTL_S) -> str:
        """A link to the page for this session with a fresh single-use token (in the fragment,
        which browsers never send to a server)."""
        token = mint_media_token(self.secret, self.session_id, ttl_s=ttl_s)
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{shown}:{self.gateway.port}/demo/#session={self.session_id}&token={token}"


@contextlib.asynccontextmanager
async def browser_demo(
    provider: str = "openai",
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    url: str | None = None,
    key: str | None = None,
    model: str | None = None,
) -> AsyncIterator[BrowserDemo]:
    """Worker + gateway + a session created by this backend (see the module docstring)."""
    model = model or DEFAULT_MODELS[provider]
    async with _distributed(provider, model, url, key) as backend:
        assert isinstance(backend, RedisRealtimeClient)
        secret = secrets.token_urlsafe(48)
        settings = replace(
            GatewaySettings.from_env({**os.environ, "REDIS_URL": backend.redis_url}),
            metrics_port=0,
            namespace=f"demo-{os.getpid()}",
            media_token_secret=secret,
        )
        gateway = Gateway(settings, host=host, port=port)
        await gateway.start()
        try:
            _answer_tools(backend)
            await backend.connect(demo_config())
            yield BrowserDemo(gateway, backend, secret, host)
        finally:
            with contextlib.suppress(VoicegridError):
                await backend.disconnect()
            await gateway.drain()
            await gateway.close()


def _answer_tools(backend: RedisRealtimeClient) -> None:
    """The backend keeps the control plane: it runs the tools, the page only shows the calls."""

    def on_tool_call(e: ToolCallEvent) -> None:
        result = lookup_weather(e.arguments)
        print(f"  backend: tool {e.name}({e.arguments}) -> {result}")
        backend.send_tool_response(
            [RealtimeToolResponse(call_id=e.call_id, output=result, name=e.name)]
        )

    def on_transcript(e: TranscriptEvent) -> None:
        if e.final:
            print(f"  {e.role}: {e.text}")

    backend.on("tool-call", on_tool_call)
    backend.on("transcript", on_transcript)


async def _main(args: argparse.Namespace) -> int:
    provider = args.provider
    async with (
        _provider_endpoint(provider, args.live) as (url, key),
        browser_demo(
            provider, host=args.host, port=args.port, url=url, key=key, model=args.model
        ) as demo,
    ):
        print(f"voicegrid demo --browser: session {demo.session_id} ({provider}, simulated)")
        print("  open this link within 10 minutes (it works once; Ctrl-C ends the demo):")
        print(f"\n    {demo.page_url()}\n", flush=True)
        stop = asyncio.Event()
        stop_on_signals(stop, log)
        await stop.wait()
    return 0


def run_browser(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except VoicegridError as exc:
        print(f"voicegrid demo: {exc}", file=sys.stderr)
        return 2
