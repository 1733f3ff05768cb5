"""structlog set-up, done once per process.

Every line on stdout is one JSON object: ``event`` names what happened, the
other keys are its fields. Records from the standard library (grpc, botocore)
go through the same renderer so the stream stays machine-readable.

Tracebacks are rendered as structured frames without their local variables:
locals of a failing AWS call hold whole request bodies, and a servicer's
hold the request and its context. An error a client causes is not a bug of
ours and gets no traceback at all: grpc.aio's "Unexpected [...] raised by
servicer method [...]" record for a request that does not decode, or a
method the servicer leaves unimplemented, becomes one warning line
(``rpc_request_undecodable``, ``rpc_method_unimplemented``) naming the
method; anything else raised out of a handler stays an error with its
traceback (``rpc_handler_failed``). Cancelled and timed-out calls are
logged by grpc at DEBUG only, below the level let through here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Final

import structlog

# Locals off: see the module docstring. (structlog's dict_tracebacks shows them.)
_render_exceptions = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)

# How grpc.aio (grpc/_cython/_cygrpc/aio/server.pyx.pxi, _handle_exceptions)
# logs an exception out of a handler, or out of decoding the request it was
# to get, with the traceback attached.
_GRPC_LOGGER = "grpc._cython.cygrpc"
_GRPC_HANDLER_EXCEPTION = re.compile(
    r"Unexpected \[(?P<type>[^\]]*)\] raised by servicer method \[(?P<method>[^\]]*)\]"
)

# Exceptions a client's call causes, told by where they were raised (the
# innermost frame), so the same exception raised by our own code keeps its
# traceback.
_GRPC_DESERIALIZE = "grpc._cython.cygrpc.deserialize"  # the request's bytes
_GENERATED_SERVICERS = "_pb2_grpc.py"  # base classes' "Method not implemented!"


def _client_caused(error: BaseException) -> str | None:
    """The event for an exception a client's call caused, else None."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    raised_in = frames[-1]
    if raised_in.name == _GRPC_DESERIALIZE:
        return "rpc_request_undecodable"
    if isinstance(error, NotImplementedError) and raised_in.filename.endswith(_GENERATED_SERVICERS):
        # The base class set UNIMPLEMENTED first: that is what the client saw.
        return "rpc_method_unimplemented"
    return None


# An exception carrying a call's event id (PEP 678 note), added where the
# event id is known (the analytics interceptor) and read here into the log
# line of the exception, which grpc.aio writes.
_EVENT_ID_NOTE: Final = "offpath event_id="


def event_id_note(event_id: str) -> str:
    """The note that puts ``event_id`` on the log line of the exception it is added to."""
    return _EVENT_ID_NOTE + event_id


def _noted_event_id(error: BaseException) -> str | None:
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_EVENT_ID_NOTE):
            return note[len(_EVENT_ID_NOTE) :]
    return None


def grpc_handler_errors(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """For a foreign record (a ProcessorFormatter pre-chain step): grpc's
    record of an exception out of a handler becomes a named event with the
    method as a field; one a client caused loses its traceback and is a
    warning (see the module docstring). Any other record passes unchanged."""
    record = event_dict.get("_record")
    if record is None or record.name != _GRPC_LOGGER:
        return event_dict
    match = _GRPC_HANDLER_EXCEPTION.fullmatch(str(event_dict.get("event", "")))
    if match is None:
        return event_dict
    exc_info = event_dict.get("exc_info")
    error = exc_info[1] if isinstance(exc_info, tuple) else None
    event_dict["method"] = match["method"]
    event_id = _noted_event_id(error) if isinstance(error, BaseException) else None
    if event_id is not None:
        event_dict["event_id"] = event_id
    event = _client_caused(error) if isinstance(error, BaseException) else None
    if event is None:
        event_dict.update(event="rpc_handler_failed", error_type=match["type"])
    else:
        del event_dict["exc_info"]
        event_dict.update(event=event, level="warning", error=str(error))
    return event_dict


class Throttle:
    """At most one log line per ``interval_s`` for each key (say, a method
    and a reason): a client repeating a mistake, or a scanner, does not
    flood the log. :meth:`allow` says whether to log now and how many lines
    of that key were held back since the last one (to log with it)."""

    def __init__(self, interval_s: float = 1.0, *, max_keys: int = 1024) -> None:
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def allow(self, key: object, now: float | None = None) -> tuple[bool, int]:
        """(log this one, lines held back before it)."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        if last is None and len(self._last) >= self._max_keys:
            self._last.clear()  # many distinct keys: start over rather than grow
            self._held.clear()
        self._last[key] = now
        return True, self._held.pop(key, 0)


def configure_logging(service: str, level: str = "info") -> None:
    """Route structlog and stdlib logging to JSON lines on stdout."""
    numeric = logging.getLevelNamesMapping()[level.upper()]

    def add_service(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            _render_exceptions,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line (PrintLogger's print() makes two, the line and
        # its newline, when stdout is unbuffered): processes sharing stdout
        # (a supervisor, its workers, their senders) cannot tear each
        # other's lines.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, grpc_handler_errors],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _render_exceptions,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are chatty at INFO (botocore credential discovery, ...).
    root.setLevel(max(numeric, logging.WARNING))


def parse_line(line: str) -> dict[str, Any] | None:
    """One log line as the record it encodes, or None when it is not one of
    ours (a JSON object with an ``event``): a library printing plain text,
    a torn last line."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record in a log file, in order (lines that are not records skipped)."""
    with path.open(encoding="utf-8") as stream:
        return [record for line in stream if (record := parse_line(line)) is not None]
