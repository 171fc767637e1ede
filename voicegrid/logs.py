"""Process logging for every ``voicegrid`` command: human text, or one JSON object per line.

``json`` writes each record as a single line that any JSON log pipeline parses: ``ts`` (ISO 8601,
UTC, milliseconds), ``level``, ``logger``, ``message`` (the formatted message), ``exception``
(the whole traceback as one string, when there is one), ``stack`` (with ``stack_info``), and every
``extra=`` field (e.g. ``session_id``) as a key of its own. Values JSON cannot hold are written as
their ``str``. orjson escapes newlines inside strings, so a traceback never splits a line.
Lines a command prints itself (a readiness line, an error before logging is set up) go through
:func:`console_line`, so in ``json`` mode they are records too.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging", "console_line", "json_requested"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has; anything else on a record came from ``extra=``
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _default(value: Any) -> str:
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = value
        return orjson.dumps(out, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's records to stderr at ``level`` in ``fmt`` (``text`` or ``json``),
    replacing whatever handlers the root logger had."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def json_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``VOICEGRID_LOG_FORMAT`` asks for JSON (read before any settings are parsed)."""
    env = os.environ if environ is None else environ
    return env.get("VOICEGRID_LOG_FORMAT", "").strip().lower() == "json"


def console_line(
    message: str, *, logger: str = "voicegrid", level: int = logging.INFO, **fields: Any
) -> str:
    """A line a command prints itself: ``message`` as it is, or, when JSON logs are asked for,
    one record like every log line (``fields`` become keys)."""
    if not json_requested():
        return message
    record = logging.LogRecord(logger, level, "", 0, message, None, None)
    record.__dict__.update(fields)
    return JsonFormatter().format(record)
