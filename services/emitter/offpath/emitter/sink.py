"""The interface between the emitter and wherever events go."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from offpath.v1 import analytics_pb2

# Seconds: the buckets of the backend call latency histogram (an SQS call
# takes a few ms in region, seconds when it is in trouble).
CALL_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS_NS: Final = tuple(int(b * 1e9) for b in CALL_BUCKETS_S)


@dataclass(slots=True)
class CallLatencies:
    """How long backend calls took, as histogram counts: one per bucket of
    ``CALL_BUCKETS_S`` (a call is counted in the first bucket it fits), then
    one for longer calls, and their total in nanoseconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(_BOUNDS_NS) + 1))
    sum_ns: int = 0

    def observe(self, elapsed_ns: int) -> None:
        self.counts[bisect_left(_BOUNDS_NS, elapsed_ns)] += 1
        self.sum_ns += elapsed_ns

    def add(self, other: CallLatencies) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_ns += other.sum_ns

    def copy(self) -> CallLatencies:
        return CallLatencies(list(self.counts), self.sum_ns)

    def as_dict(self) -> dict[str, object]:
        return {"counts": list(self.counts), "sum_ns": self.sum_ns}

    @classmethod
    def from_dict(cls, data: object) -> CallLatencies:
        """From :meth:`as_dict`'s form (a sender's report); empty if malformed."""
        if isinstance(data, dict):
            counts, sum_ns = data.get("counts"), data.get("sum_ns")
            if (
                isinstance(counts, list)
                and len(counts) == len(_BOUNDS_NS) + 1
                and all(isinstance(c, int) for c in counts)
                and isinstance(sum_ns, int)
            ):
                return cls(list(counts), sum_ns)
        return cls()


# What one backend call came to, for ``offpath_emitter_sqs_requests_total{outcome}``:
# every entry accepted, some entries failed (retried or rejected), throttled,
# a 5xx, another error response, or no response at all (connection refused,
# timed out).
OUTCOMES: Final = ("ok", "partial", "throttled", "server_error", "client_error", "unreachable")


@dataclass(slots=True)
class SendProgress:
    """A sink's backend calls as they happen: cumulative counters written by
    the one thread that uses the sink, after each call (not when an export
    ends), so a scrape during an outage sees attempts and retries move. Read
    from any thread: ints and a dict copied under the GIL.

    ``retrying`` is a gauge: events of the export in progress that failed at
    least once and wait for another attempt."""

    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    retrying: int = 0
    latencies: CallLatencies = field(default_factory=CallLatencies)

    @property
    def requests(self) -> int:
        return sum(dict.copy(self.outcomes).values())

    def add(self, result: ExportResult) -> None:
        """Count an export's calls after it ended (a sink without live progress)."""
        if result.outcomes:
            self.outcomes.update(result.outcomes)
        elif result.requests:
            self.outcomes["ok" if not result.dropped else "unreachable"] += result.requests
        self.retries += result.retries
        self.latencies.add(result.latencies)

    def copy(self) -> SendProgress:
        return SendProgress(
            Counter(dict.copy(self.outcomes)), self.retries, self.retrying, self.latencies.copy()
        )


def live_progress(sink: object) -> SendProgress | None:
    """The sink's live call counters, when it keeps them."""
    progress = getattr(sink, "progress", None)
    return progress if isinstance(progress, SendProgress) else None


@dataclass(slots=True)
class ExportResult:
    """What one export did with the events it was given: every event is
    either ``sent`` or counted in ``dropped`` under a reason. ``unsent``
    holds the events counted as ``send_failed`` when the sink can tell which
    (the spool keeps them for later)."""

    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # calls made to the backend, retries included
    outcomes: Counter[str] = field(default_factory=Counter)  # the calls by outcome
    retries: int = 0  # calls that resent something that failed before
    unsent: list[analytics_pb2.AnalyticsEvent] = field(default_factory=list)
    # How long each call to the backend took, failed ones included.
    latencies: CallLatencies = field(default_factory=CallLatencies)

    def merge(self, other: ExportResult) -> None:
        self.sent += other.sent
        self.dropped.update(other.dropped)
        self.requests += other.requests
        self.outcomes.update(other.outcomes)
        self.retries += other.retries
        self.unsent.extend(other.unsent)
        self.latencies.add(other.latencies)


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
