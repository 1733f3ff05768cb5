"""The interface between the batcher and wherever events go."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from offpath.v1 import analytics_pb2


@dataclass(slots=True)
class ExportResult:
    """What one export did with the events it was given: every event is
    either ``sent`` or counted in ``dropped`` under a reason."""

    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # calls made to the backend, retries included
    retries: int = 0  # calls that resent something that failed before

    def merge(self, other: ExportResult) -> None:
        self.sent += other.sent
        self.dropped.update(other.dropped)
        self.requests += other.requests
        self.retries += other.retries


class EventSink(Protocol):
    """Receives batches of events on the emitter's worker thread.

    ``export`` may block (it runs off the event loop) but must return by
    ``deadline`` (a ``time.monotonic()`` value) give or take one backend call,
    and must account for every event in its result instead of raising.
    """

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult: ...

    def close(self) -> None: ...
