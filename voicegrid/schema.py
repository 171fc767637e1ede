"""``voicegrid schema``: the JSON Schemas of the Redis contract, generated from its models.

Non-Python producers build configs, commands and read events from these files
(``docs/schema/``, referenced by ``docs/streams.md``); they are generated from the pydantic
models, never edited by hand::

    voicegrid schema            # (re)write docs/schema/ (run from the repository root)
    voicegrid schema --check    # exit 1 naming every stale, missing or extra file

Files: ``session-config.json`` (``RealtimeSessionConfig``), ``session-config-update.json``
(``RealtimeSessionConfigUpdate``), ``capabilities.json`` (the ``connect`` ack's
``capabilities``), ``ack-error.json`` (the body of an ``ok=0`` ack), ``commands/<c>.json`` (the
body ``b`` of each command), ``events/<name>.json`` (the payload ``b`` of each event; ``audio``
travels as raw bytes, not JSON) and ``simulator-scenario.json`` (``voicegrid simulate --script``).
Schemas of what the workers write (events, capabilities, ack errors) list every property as
required: the workers always write them all. ``tests/unit/test_schema_files.py`` fails when a
file is stale.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from protocol import RealtimeCapabilities, RealtimeSessionConfig, RealtimeSessionConfigUpdate
from protocol.events import EVENT_MODELS
from protocol.streams import Command
from providers.simulator.scenario import SimScenario

__all__ = ["DEFAULT_DIR", "AckError", "check", "render", "run", "schemas", "write"]

#: Where the schemas live, relative to the repository root.
DEFAULT_DIR = Path("docs") / "schema"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: every command model: the members of the ``Command`` union (``Annotated[A | B | ..., ...]``)
_COMMANDS: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(Command)[0])


class AckError(BaseModel):
    """The body ``b`` of an ``ok=0`` acknowledgement (``protocol.streams.error_to_body``):
    ``type`` the error class (e.g. ``ConfigError``, ``ProviderAuthError``), ``code`` and
    ``recoverable`` for provider errors only."""

    model_config = ConfigDict(extra="forbid", title="ack-error")

    type: str
    message: str
    code: str | None = None
    recoverable: bool | None = None


def _all_required(node: Any) -> None:
    """Every property of every object is required (what the workers write has them all)."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict) and properties:
            node["required"] = list(properties)
        for value in node.values():
            _all_required(value)
    elif isinstance(node, list):
        for value in node:
            _all_required(value)


def _schema(
    model: type[BaseModel],
    title: str,
    *,
    mode: Literal["validation", "serialization"] = "validation",
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    body = model.model_json_schema(mode=mode, by_alias=True)
    for name in drop:
        body.get("properties", {}).pop(name, None)
        if name in body.get("required", []):
            body["required"].remove(name)
    if mode == "serialization":
        _all_required(body)
    body["title"] = title
    return {"$schema": _DIALECT, **body}


def schemas() -> dict[str, dict[str, Any]]:
    """Every schema file by its path under ``docs/schema/``."""
    out: dict[str, dict[str, Any]] = {
        "session-config.json": _schema(RealtimeSessionConfig, "session-config"),
        "session-config-update.json": _schema(RealtimeSessionConfigUpdate, "session-config-update"),
        "capabilities.json": _schema(RealtimeCapabilities, "capabilities", mode="serialization"),
        "ack-error.json": _schema(AckError, "ack-error"),
        "simulator-scenario.json": _schema(SimScenario, "simulator-scenario"),
    }
    for command in _COMMANDS:
        name = command.model_fields["type"].default
        out[f"commands/{name}.json"] = _schema(command, f"command {name}", drop=("type",))
    for event, model in sorted(EVENT_MODELS.items()):
        if event != "audio":
            out[f"events/{event}.json"] = _schema(model, f"event {event}", mode="serialization")
    return out


def render(schema: dict[str, Any]) -> bytes:
    """A schema file's exact bytes (stable: two-space indent, a final newline)."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n"


def write(directory: Path) -> list[Path]:
    """Write every schema under ``directory`` and remove stale ones; the files written."""
    wanted = schemas()
    for stale in _existing(directory) - set(wanted):
        (directory / stale).unlink()
    written = []
    for name, schema in wanted.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = render(schema)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """Problems with the files under ``directory`` (empty: up to date)."""
    wanted = schemas()
    problems = [
        f"{name}: not generated by voicegrid schema"
        for name in sorted(_existing(directory) - set(wanted))
    ]
    for name, schema in wanted.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_bytes() != render(schema):
            problems.append(f"{name}: stale")
    return problems


def _existing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*.json")}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voicegrid schema``; returns the exit code."""
    directory = Path(args.out)
    if args.check:
        problems = check(directory)
        for problem in problems:
            print(f"voicegrid schema: {directory / problem}", file=sys.stderr)
        if problems:
            print("voicegrid schema: run `voicegrid schema` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    written = write(directory)
    print(f"{len(written)} of {len(schemas())} schema files updated in {directory}")
    return 0
