"""The interface between the emitter and wherever events go."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from offpath.v1 import analytics_pb2


@dataclass(slots=True)
class ExportResult:
    """What one export did with the events it was given: every event is
    either ``sent`` or counted in ``dropped`` under a reason. ``unsent``
    holds the events counted as ``send_failed`` when the sink can tell which
    (the spool keeps them for later)."""

    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # calls made to the backend, retries included
    retries: int = 0  # calls that resent something that failed before
    unsent: list[analytics_pb2.AnalyticsEvent] = field(default_factory=list)

    def merge(self, other: ExportResult) -> None:
        self.sent += other.sent
        self.dropped.update(other.dropped)
        self.requests += other.requests
        self.retries += other.retries
        self.unsent.extend(other.unsent)


class EventSink(Protocol):
    """Receives batches of events on the emitter's sender thread, and only
    there: a sink is never used by two threads.

    ``export`` may block (it runs off the event loop) but must return by
    ``deadline`` (a ``time.monotonic()`` value) give or take one backend call,
    and must account for every event in its result instead of raising.
    ``prepare`` pays one-time set-up costs (connections, look-ups) before
    traffic arrives; it may raise, and ``export`` must cope if it did.
    """

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult: ...

    def prepare(self) -> None: ...

    def close(self) -> None: ...
