"""Event sinks for tests of the sender process, made in the child by name
(``offpath.testing.sinks:file_sink``, its options as the JSON sink argument,
see :func:`sink_arg`): what a test can read back from outside the process
that sent it."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sink import ExportResult
from offpath.v1 import analytics_pb2


class FileSink:
    """Appends one JSON line per exported batch: the event ids, the batch's
    size and the sender's pid. ``prepare`` and ``close`` leave a line too."""

    def __init__(
        self,
        path: Path,
        *,
        delay_s: float = 0.0,
        fail_prepare: bool = False,
        ignore_deadline: bool = False,
        down: bool = False,
    ) -> None:
        self._path = path
        self._delay_s = delay_s
        self._fail_prepare = fail_prepare
        self._ignore_deadline = ignore_deadline
        self._down = down

    def _line(self, record: dict[str, object]) -> None:
        with self._path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({**record, "pid": os.getpid()}) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult:
        """Takes ``delay_s`` per call, as a slow backend would. A call that
        would end after ``deadline`` gives up there and drops the batch as
        ``send_failed`` (as SqsSink does), unless told to ignore deadlines
        (a backend call that hangs)."""
        ids = [event.event_id for event in events]
        if self._down:
            self._line({"kind": "gave_up", "ids": ids})
            return ExportResult(
                dropped=Counter({"send_failed": len(events)}), requests=1, unsent=list(events)
            )
        if self._delay_s:
            left = deadline - time.monotonic()
            if self._ignore_deadline or self._delay_s <= left:
                time.sleep(self._delay_s)
            else:
                time.sleep(max(0.0, left))
                self._line({"kind": "gave_up", "ids": ids})
                return ExportResult(
                    dropped=Counter({"send_failed": len(events)}), requests=1, unsent=list(events)
                )
        self._line({"kind": "batch", "ids": ids})
        return ExportResult(sent=len(events), requests=1)

    def prepare(self) -> None:
        self._line({"kind": "prepare"})
        if self._fail_prepare:
            raise ConnectionError("the backend is not there (as asked)")

    def close(self) -> None:
        self._line({"kind": "close"})


def sink_arg(
    path: Path,
    *,
    delay_s: float = 0.0,
    fail_prepare: bool = False,
    ignore_deadline: bool = False,
    down: bool = False,
) -> str:
    """The sink argument for :func:`file_sink`: where to write, how long each
    export takes (a slow backend), whether prepare fails, whether an export
    overruns its deadline (a hung backend call), whether every send fails (a
    backend that is down)."""
    return json.dumps(
        {
            "path": str(path),
            "delay_s": delay_s,
            "fail_prepare": fail_prepare,
            "ignore_deadline": ignore_deadline,
            "down": down,
        }
    )


def file_sink(settings: EmitterSettings, arg: str) -> FileSink:
    """Made in the sender process from :func:`sink_arg`'s text."""
    options = json.loads(arg)
    return FileSink(
        Path(options["path"]),
        delay_s=float(options["delay_s"]),
        fail_prepare=bool(options["fail_prepare"]),
        ignore_deadline=bool(options["ignore_deadline"]),
        down=bool(options["down"]),
    )


def read_batches(path: Path) -> list[list[str]]:
    """The event ids of every batch the sink received, in order."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line["ids"] for line in lines if line["kind"] == "batch"]
