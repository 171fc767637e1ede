"""The Node.js example runs a whole session with nothing but the documented Redis contract.

``node examples/node/session.js`` (ioredis from the lockfile) against a real ``voicegrid worker``
process and ``voicegrid simulate --script examples/simulator/tool-call.json`` on the machine's
Redis (``REDIS_URL``): it creates the session with one ``XADD``, streams a tone, answers the tool
call, updates the config, drops its Redis connections and resumes from its last event id, and
ends the session. Its last stdout line is a JSON summary; this test checks it against Redis and
the schemas. Node.js and npm are required in CI (``.ci/run`` runs ``npm ci``); elsewhere the test
is skipped when they are missing, and installs the lockfile's packages when they are not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from redis import Redis

from protocol.keys import Keys

from ...support.net import free_port, voicegrid_command, wait_until_serving
from ...support.timing import scaled

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
NODE_DIR = REPO / "examples" / "node"
SCENARIO = REPO / "examples" / "simulator" / "tool-call.json"
SCHEMAS = REPO / "docs" / "schema"
SIM_KEY = "sk-node-example"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}: CI must run the Node.js example (.ci/run installs its packages)")
    pytest.skip(f"{reason}: the Node.js example needs Node.js >= 20 and npm")


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with the example's packages installed from its lockfile."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable(f"{'node' if node is None else 'npm'} is not installed")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = re.match(r"v(\d+)", version.stdout.strip())
    if major is None or int(major.group(1)) < 20:
        _unavailable(f"node {version.stdout.strip()} is too old")
    if not (NODE_DIR / "node_modules" / "ioredis").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=scaled(300),
        )
    return node


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"vgnode-{uuid.uuid4().hex[:10]}"
    yield ns
    redis = Redis.from_url(os.environ["REDIS_URL"])
    try:
        for pattern in (f"{ns}:*", f"arq:*:{ns}:*"):
            keys = list(redis.scan_iter(match=pattern, count=1000))
            if keys:
                redis.delete(*keys)
    finally:
        redis.close()


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(scaled(15))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, needle: str, within: float) -> None:
    deadline = time.monotonic() + scaled(within)
    while needle not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"exited before {needle!r}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {needle!r} within {within}s: {log.read_text()}"
        time.sleep(0.05)


def check_event(line: dict[str, Any]) -> list[str]:
    """An event line the script printed, against its schema (audio is summarised, not JSON)."""
    name = line["event"]
    if name == "audio":
        return []
    payload = {k: v for k, v in line.items() if k not in ("id", "event")}
    schema = orjson.loads((SCHEMAS / "events" / f"{name}.json").read_bytes())
    return [
        f"{name}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(payload)
    ]


def test_a_node_session_runs_end_to_end_on_the_documented_contract(
    node: str, namespace: str, tmp_path: Path
) -> None:
    redis_url = os.environ["REDIS_URL"]
    sim_port, metrics_port = free_port(), free_port()
    sim_env = {"VOICEGRID_SIM_SPEED": "4", "VOICEGRID_SIM_API_KEY": SIM_KEY}  # env over the file
    simulate = voicegrid_command("simulate", "--port", str(sim_port), "--script", str(SCENARIO))
    worker_env = {
        "REDIS_URL": redis_url,
        "VOICEGRID_NAMESPACE": namespace,
        "VOICEGRID_OPENAI_URL": f"ws://127.0.0.1:{sim_port}/v1/realtime",
        "OPENAI_API_KEY": SIM_KEY,
        "VOICEGRID_METRICS_PORT": str(metrics_port),
    }
    with (
        process(simulate, sim_env, tmp_path / "simulator.log") as sim,
        process(voicegrid_command("worker"), worker_env, tmp_path / "worker.log") as worker,
    ):
        wait_for_line(sim, tmp_path / "simulator.log", "listening", within=20)
        wait_until_serving(
            metrics_port, "/readyz", alive=lambda: worker.poll() is None, what="the worker"
        )
        run = subprocess.run(
            [
                node,
                str(NODE_DIR / "session.js"),
                "--redis",
                redis_url,
                "--namespace",
                namespace,
                "--timeout-s",
                str(scaled(20)),
            ],
            capture_output=True,
            text=True,
            timeout=scaled(120),
            cwd=REPO,
        )
    lines = [orjson.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines and "summary" in lines[-1], (
        f"no summary: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    )
    summary = lines[-1]["summary"]
    assert run.returncode == 0, (
        f"errors {summary['errors']}; stderr {run.stderr[-2000:]}; "
        f"worker log {(tmp_path / 'worker.log').read_text()[-3000:]}"
    )
    # created through <ns>:create, answered by ack ref=<request id>, within a bounded time
    assert re.fullmatch(r"\d+-\d+", summary["request_id"])
    assert summary["created_ms"] < scaled(3) * 1000
    # the tool call was answered and its result spoken
    assert summary["tool_calls"] == [
        {"call_id": summary["tool_calls"][0]["call_id"], "name": "get_weather",
         "arguments": {"city": "Paris"}}
    ]  # fmt: skip
    assert summary["tool_responses"] == 1
    assert any("temp_c: 21" in t for t in summary["transcripts"] if t.startswith("assistant"))
    assert summary["config_updated"] == "in-place"
    assert summary["audio_out_bytes"] > 24000  # over half a second of 24 kHz PCM16 speech
    assert summary["frames_sent"] == 2 * 90  # two turns of 1.8 s in 20 ms frames
    # the restart: events written while it had no connection arrived after it resumed
    restart = summary["restart"]
    assert restart["backlog"] > 0 and restart["first_id_after"] > restart["resumed_after"]
    assert summary["closed"] == {"reason": "client disconnect", "code": 1000}
    # nothing lost or repeated: what the script read across both connections is the stream
    redis = Redis.from_url(redis_url)
    try:
        keys = Keys(namespace).session(summary["session_id"])
        stream = [entry_id.decode() for entry_id, _ in redis.xrange(keys.output)]
        record = redis.hgetall(keys.state)
    finally:
        redis.close()
    assert summary["entry_ids"] == stream and summary["ids_match"] is True
    assert len(set(stream)) == len(stream)
    assert record[b"status"] == b"closed" and record[b"req"].decode() == summary["request_id"]
    # what it printed is what the schemas say
    problems = [p for line in lines if "event" in line for p in check_event(line)]
    assert not problems, problems
