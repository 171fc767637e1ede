"""Every JSON example in the docs is checked against the schemas and against the code.

Examples are found in ``docs/*.md`` and ``README.md``:

- ``json`` code blocks: in ``docs/gateway.md`` a gateway -> caller message; elsewhere a block
  must be labelled by an HTML comment on the line before, ``<!-- example: <what> -->`` with
  ``config``, ``config-update``, ``command <c>``, ``event <name>``, ``ack connect``, ``ack ping``
  or ``ack error``; ``external <what>`` marks another service's JSON (e.g. a telephony
  provider's API), which only has to parse. An unlabelled block fails, so no new example goes
  unchecked.
- lines ``-> {...}`` (caller -> gateway) and ``<- {...}`` (gateway -> caller) in any code block,
  continued on indented lines.

``{...}`` in an example stands for an object shown elsewhere. Checks: a caller message must pass
the gateway's own parser (and its ``config`` / ``responses`` their schemas); a command body the
worker's decoder; a config the config parser. Everything the code writes (gateway messages,
event bodies, ack bodies) must match a message of the same kind that a real call through the
gateway produced (OpenAI client, simulator): the same keys, the same JSON types, the same
values where a value is a fixed vocabulary (``reason``, ``code``, ``strategy``, ``status``, ...),
and its schema. The §8 transcript's caller messages are the ones the call sends, and its gateway
messages must come in the order the call produced them.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest

from ingress.gateway import parse_caller_message
from protocol import parse_config, parse_update
from protocol.events import EVENT_MODELS
from protocol.keys import Keys
from protocol.streams import decode_command, error_from_body, error_to_body
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript

from ..conftest import NAMESPACE

REPO = Path(__file__).resolve().parents[3]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
SCHEMAS = REPO / "docs" / "schema"
ANY_OBJECT = "\x00any object"  # what ``{...}`` stands for
#: keys whose values are a fixed vocabulary: an example must show a value the code sends
LITERAL = {
    "type", "id", "reason", "code", "strategy", "status", "role", "final", "recoverable",
    "command", "encoding", "sample_rate", "provider", "model", "name", "alive",
}  # fmt: skip
_LABEL = re.compile(r"<!--\s*example:\s*(.+?)\s*-->")


@dataclasses.dataclass
class Example:
    where: str
    kind: str  # "caller", "gateway" or a block label ("command tool_response", ...)
    body: Any
    transcript: bool = False  # a line of an arrow transcript (its order is checked)

    def __str__(self) -> str:
        return f"{self.where} ({self.kind})"


def _loads(text: str) -> Any:
    return orjson.loads(text.replace("{...}", orjson.dumps(ANY_OBJECT).decode()))


def _arrows(lines: list[str], first: int, where: str) -> list[Example]:
    found: list[Example] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(("-> {", "<- {")):
            start, text = i, line[3:]
            while True:
                try:
                    body = _loads(text)
                    break
                except orjson.JSONDecodeError:
                    i += 1
                    if i >= len(lines) or not lines[i].startswith((" ", "\t")):
                        raise AssertionError(f"{where}:{first + start}: not JSON: {text}") from None
                    text += " " + lines[i].strip()
            kind = "caller" if line.startswith("->") else "gateway"
            found.append(Example(f"{where}:{first + start}", kind, body, transcript=True))
        i += 1
    return found


def collect() -> list[Example]:
    found: list[Example] = []
    for path in DOCS:
        where = str(path.relative_to(REPO))
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("```"):
                i += 1
                continue
            lang = lines[i][3:].strip()
            label = _LABEL.search(lines[i - 1]) if i else None
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            block = lines[i + 1 : end]
            if lang == "json":
                body = _loads("\n".join(block))
                kind = label.group(1) if label else ("gateway" if path.name == "gateway.md" else "")
                found.append(Example(f"{where}:{i + 2}", kind, body))
            else:
                found += _arrows(block, i + 2, where)
            i = end + 1
    return found


EXAMPLES = collect()


def _validate(schema_name: str, instance: Any) -> list[str]:
    schema = orjson.loads((SCHEMAS / schema_name).read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def matches(doc: Any, real: Any, key: str | None = None) -> bool:
    """``doc`` shows what the code sent as ``real`` (see the module docstring)."""
    if doc == ANY_OBJECT:
        return isinstance(real, dict)
    if isinstance(doc, dict):
        return (
            isinstance(real, dict)
            and doc.keys() == real.keys()
            and all(matches(doc[k], real[k], k) for k in doc)
        )
    if isinstance(doc, list):
        return (
            isinstance(real, list)
            and len(doc) == len(real)
            and all(matches(d, r, key) for d, r in zip(doc, real, strict=True))
        )
    if key == "event_id" and not re.fullmatch(r"\d+-\d+", str(doc)):
        return False
    if key in LITERAL:
        return _json_kind(doc) == _json_kind(real) and doc == real
    return _json_kind(doc) == _json_kind(real)


def filled(doc: Any, real: Any) -> Any:
    """``doc`` with every ``{...}`` replaced by what the code sent there."""
    if doc == ANY_OBJECT:
        return copy.deepcopy(real)
    if isinstance(doc, dict):
        return {k: filled(v, real[k]) for k, v in doc.items()}
    if isinstance(doc, list):
        return [filled(d, r) for d, r in zip(doc, real, strict=True)]
    return doc


def schema_problems(example: Example) -> list[str]:
    """Schema violations of an example (with ``{...}`` filled in by the caller)."""
    body, kind = example.body, example.kind
    if kind == "caller":
        checks = {"session.start": ("config", "session-config.json"),
                  "config.update": ("config", "session-config-update.json")}  # fmt: skip
        if body["type"] in checks:
            field, schema = checks[body["type"]]
            return _validate(schema, body.get(field, {}))
        if body["type"] == "tool.response":
            return _validate("commands/tool_response.json", {"responses": body["responses"]})
        return []
    if kind == "gateway":
        if "event_id" in body and body["type"] in EVENT_MODELS:
            payload = {k: v for k, v in body.items() if k not in ("type", "event_id")}
            return _validate(f"events/{body['type']}.json", payload)
        if body["type"] in ("session.started", "session.attached"):
            audio = {k: body[k] for k in ("input_audio", "output_audio")}
            return _validate("capabilities.json", body["capabilities"]) + _validate(
                "session-config.json", audio
            )
        return []
    what, _, name = kind.partition(" ")
    if what == "config":
        return _validate("session-config.json", body)
    if what == "config-update":
        return _validate("session-config-update.json", body)
    if what in ("command", "event"):
        return _validate(f"{what}s/{name}.json", body)
    if kind == "ack connect":
        assert body.keys() == {"capabilities"}, f"{example}: expected only 'capabilities'"
        return _validate("capabilities.json", body["capabilities"])
    if kind == "ack error":
        return _validate("ack-error.json", body)
    if what == "external":
        return []  # another service's JSON: it parsed, nothing of ours describes it
    if kind == "ack ping":
        return [] if body.keys() == {"alive"} and isinstance(body["alive"], bool) else ["shape"]
    raise AssertionError(f"{example}: unknown example label {kind!r}")


def test_every_json_example_is_found_and_labelled() -> None:
    unlabelled = [str(e) for e in EXAMPLES if not e.kind]
    assert not unlabelled, f"label these with <!-- example: ... -->: {unlabelled}"
    kinds = {(e.kind.split() or [""])[0] for e in EXAMPLES}
    assert {"caller", "gateway", "config", "command", "event", "ack"} <= kinds
    assert sum(e.transcript for e in EXAMPLES) >= 15  # docs/gateway.md §8


@pytest.mark.parametrize(
    "example",
    [
        e
        for e in EXAMPLES
        if (e.kind.split() or [""])[0] in ("caller", "config", "config-update", "command")
    ]
    + [e for e in EXAMPLES if e.kind == "ack error"],
    ids=str,
)
def test_what_callers_send_is_accepted_by_the_code_and_the_schema(example: Example) -> None:
    """Inputs: the code that reads them accepts them, and so do their schemas."""
    body, (what, _, name) = example.body, example.kind.partition(" ")
    if what == "caller":
        parse_caller_message(orjson.dumps(body))
    elif what == "config":
        parse_config(body)
    elif what == "config-update":
        parse_update(body)
    elif what == "command":
        decode_command(name, body)
    else:  # an error body: the code's own encoding of the error it describes is the example
        assert error_to_body(error_from_body(body)) == body
    assert schema_problems(example) == []


# --- the recorded call -------------------------------------------------------------------------


def _caller_example(kind: str) -> dict[str, Any]:
    """The §8 transcript's caller message of type ``kind`` (sent as written)."""
    return next(e.body for e in EXAMPLES if e.kind == "caller" and e.body["type"] == kind)


def _frames(rate: int) -> list[bytes]:
    """20 ms PCM16 frames: 0.6 s of a tone (speech to the simulator), then 0.6 s of silence."""
    t = np.arange(int(rate * 0.6)) / rate
    audio = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes() + b"\0\0" * int(rate * 0.6)
    step = rate * 2 // 50
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def _subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(kind in it for kind in wanted)


async def test_doc_examples_match_a_real_call(
    start_worker: Any, start_gateway: Any, open_caller: Any, make_redis: Any
) -> None:
    script = SimScript(
        reply_text="It is 21 degrees.",
        user_transcript="What is the weather in Paris?",
        tool_call=ToolCallScript(name=None, arguments={"city": "Paris"}, on_turn=1),
        speed=0,
    )
    async with OpenAISimulator(script) as sim:
        await start_worker(openai_url=sim.url, openai_api_key="sk-simulated")
        gw = await start_gateway()
        caller = await open_caller(gw.url)
        start = _caller_example("session.start")
        await caller.send(start)
        await caller.wait_for(lambda: bool(caller.of("session.started")), within=10)
        rate = start["config"]["input_audio"]["sample_rate"]
        for frame in _frames(rate):
            await caller.send_raw(frame)
        await caller.wait_for(lambda: bool(caller.of("tool-call")), within=10)
        answer = _caller_example("tool.response")
        answer["responses"][0]["call_id"] = caller.of("tool-call")[0]["call_id"]
        await caller.send(answer)
        await caller.wait_for(lambda: len(caller.of("response-done")) == 2, within=10)
        update = _caller_example("config.update")
        await caller.send(update)
        await caller.reply(update["id"])
        await caller.wait_for(lambda: bool(caller.of("config-updated")))
        await caller.send({"type": "ping", "id": "p"})
        await caller.reply("p")
        await caller.send(_caller_example("session.end"))
        assert await caller.wait_closed() == (1000, "session ended")

    sid = caller.of("session.started")[0]["session_id"]
    redis = make_redis()
    keys = Keys(NAMESPACE).session(sid)
    request = (await redis.hget(keys.state, "req")).decode()
    stream = [
        {k.decode(): v for k, v in fields.items()} for _, fields in await redis.xrange(keys.output)
    ]
    real: dict[str, list[Any]] = {}
    for message in caller.texts:
        real.setdefault(f"gateway {message['type']}", []).append(message)
    for entry in stream:
        if entry["k"] == b"e" and entry["e"] != b"audio":
            real.setdefault(f"event {entry['e'].decode()}", []).append(orjson.loads(entry["b"]))
        elif entry["k"] == b"k" and entry["ok"] == b"1":
            label = "ack connect" if entry["ref"].decode() == request else "ack command"
            real.setdefault(label, []).append(orjson.loads(entry["b"]))
    real["ack ping"] = [b for b in real.get("ack command", []) if "alive" in b]

    problems: list[str] = []
    for example in EXAMPLES:
        if example.kind == "gateway":
            key = f"gateway {example.body['type']}"
        elif (example.kind.split() or [""])[0] in ("event", "ack") and example.kind != "ack error":
            key = example.kind
        else:
            continue  # inputs: checked by the test above
        candidates = real.get(key, [])
        match = next((r for r in candidates if matches(example.body, r)), None)
        if match is None:
            shown = [orjson.dumps(r).decode()[:300] for r in candidates[:3]]
            problems.append(f"{example}: matches none of the {len(candidates)} real: {shown}")
            continue
        checked = dataclasses.replace(example, body=filled(example.body, match))
        problems += [f"{example}: schema: {p}" for p in schema_problems(checked)]
    assert not problems, "\n".join(problems)

    # the transcript shows the gateway's messages in the order a call produces them
    shown = [e.body["type"] for e in EXAMPLES if e.transcript and e.kind == "gateway"]
    sent = [m["type"] for m in caller.texts]
    assert _subsequence(shown, sent), f"docs/gateway.md §8 order {shown}; real order {sent}"
