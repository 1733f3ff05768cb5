"""structlog set-up, done once per process.

Every line on stdout is one JSON object: ``event`` names what happened, the
other keys are its fields. Records from the standard library (grpc, botocore)
go through the same renderer so the stream stays machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog


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
            structlog.processors.dict_tracebacks,
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
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
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
