"""Processes and ports: free local ports, HTTP GETs of the probe and metrics endpoints, the
``voicegrid`` command line, and waiting for a process to serve."""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from .timing import scaled

__all__ = ["free_port", "http_get", "voicegrid_command", "wait_until_serving"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET http://127.0.0.1:<port><path>``: (status, body); an error status is returned too."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=scaled(2)
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def voicegrid_command(role: str, *args: str) -> list[str]:
    """``python -m voicegrid <role> <args>`` with this interpreter."""
    return [sys.executable, "-m", "voicegrid", role, *args]


def wait_until_serving(
    port: int,
    path: str = "/healthz",
    *,
    alive: Callable[[], bool],
    what: str = "the process",
    within: float = 20.0,
) -> None:
    """Poll ``path`` until it answers 200; fail when ``alive()`` turns false or after ``within``
    seconds (scaled). Blocking: from async code run it with ``asyncio.to_thread``."""
    deadline = time.monotonic() + scaled(within)
    while True:
        assert alive(), f"{what} exited before {path} answered 200"
        try:
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what}: {path} never answered 200"
        time.sleep(0.05)
