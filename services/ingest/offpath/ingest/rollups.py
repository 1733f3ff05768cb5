"""Rollups: what a summary needs, pre-aggregated per time bucket at ingest.

The rollup table's layout belongs here (the store writes it, set-up and the
CloudFormation tests read it). Two kinds of item share the table:

- rollup items, ``pk = r#<UTC day>``, ``sk = <HH:MM>#<service>#<method>#<kind>``:
  kind ``s`` (series) holds the event count, errors by status code, a
  latency histogram, skill counts and tokens/events per model; kinds
  ``q0`` to ``q7`` hold counts per normalised query text (by a hash of the
  text), at most :data:`QUERY_KEYS_CAP` distinct texts each (later new texts
  are counted in ``qo``, "other").
  Every count is its own top-level numeric attribute (``h:17``, ``e:5``,
  ``s:Kubernetes``, ``q:what is k8s``), so ``ADD`` creates it on first
  write and no read is needed before an update.
- marker items, ``pk = m#<message id>``, ``sk = <chunk>``: one per applied
  rollup transaction, so a redelivered message adds nothing twice.

One day is one partition: a summary over ``d`` days is ``d`` Queries,
whatever the traffic. Everything expires with the events (``expires_at``).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import CreateTableInputTypeDef

ROLLUP_PARTITION: Final = "pk"
ROLLUP_SORT: Final = "sk"
ROLLUP_TTL: Final = "expires_at"
SERIES: Final = "s"
QUERIES: Final = "q"

# Latency histogram: bucket 0 is below 1 µs; bucket i >= 1 covers
# [LOW * G**(i-1), LOW * G**i) ms. G = 2**(1/8): reporting a bucket's
# geometric middle is within sqrt(G) - 1 (4.4 %) of any value inside it.
HISTOGRAM_LOW_MS: Final = 0.001
HISTOGRAM_GROWTH: Final = 2 ** (1 / 8)
HISTOGRAM_BUCKETS: Final = 8 * 30 + 1  # up to ~18 minutes; slower lands in the last
RELATIVE_ERROR: Final = math.sqrt(HISTOGRAM_GROWTH) - 1

# Query texts are NFKC-normalised, case-folded, whitespace-collapsed and cut
# to QUERY_MAX_CHARS. A bucket's texts spread over QUERY_SHARDS items by a
# hash of the text, each keeping at most QUERY_KEYS_CAP texts: an item is at
# most 12 * (2 + 80 + 21) bytes, about 1.2 KB for ASCII (4 KB if every
# character took 4 bytes), so updating one costs 2-4 write units in a
# transaction (DynamoDB bills an update by the item's size), and a message
# of one event touches one of them.
QUERY_MAX_CHARS: Final = 80
QUERY_SHARDS: Final = 8
QUERY_KEYS_CAP: Final = 12
# Skill and model names become attribute names: bounded the same way.
NAME_MAX_CHARS: Final = 64
# A transaction holds at most 100 items: 99 updates and the marker.
TRANSACTION_UPDATES: Final = 99
# An update's expression stays well under DynamoDB's 4 KB per expression.
UPDATE_MAX_COUNTERS: Final = 150

_NS_PER_S = 1_000_000_000
_SPACE = re.compile(r"\s+")


def create_table_request(table: str) -> CreateTableInputTypeDef:
    """The ``CreateTable`` request for the rollup table (on-demand billing)."""
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": ROLLUP_PARTITION, "AttributeType": "S"},
            {"AttributeName": ROLLUP_SORT, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": ROLLUP_PARTITION, "KeyType": "HASH"},
            {"AttributeName": ROLLUP_SORT, "KeyType": "RANGE"},
        ],
    }


def normalise_query(text: str) -> str:
    """The form a query is counted under: NFKC, case-folded, control
    characters dropped, whitespace collapsed, at most QUERY_MAX_CHARS."""
    return _bounded(text, QUERY_MAX_CHARS).casefold()[:QUERY_MAX_CHARS]


def _bounded(text: str, limit: int) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch.isspace())
    return _SPACE.sub(" ", text).strip()[:limit]


def histogram_bucket(ms: float) -> int:
    """The histogram bucket of a processing time in milliseconds."""
    if ms < HISTOGRAM_LOW_MS:
        return 0
    index = int(math.log(ms / HISTOGRAM_LOW_MS) / math.log(HISTOGRAM_GROWTH)) + 1
    return min(index, HISTOGRAM_BUCKETS - 1)


def bucket_value_ms(index: int) -> float:
    """The value a bucket reports: its geometric middle (bucket 0: 0)."""
    if index <= 0:
        return 0.0
    return float(HISTOGRAM_LOW_MS * HISTOGRAM_GROWTH ** (index - 1) * math.sqrt(HISTOGRAM_GROWTH))


def percentile_ms(histogram: Mapping[int, int], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of a histogram, within
    :data:`RELATIVE_ERROR` of the exact one; 0 when empty."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value_ms(index)
    return bucket_value_ms(max(histogram))


def _escape(text: str) -> str:
    """A sort-key segment: '#' separates segments, so it is escaped."""
    return text.replace("%", "%25").replace("#", "%23")


def _unescape(text: str) -> str:
    return text.replace("%23", "#").replace("%25", "%")


def day_of(ns: int) -> str:
    return datetime.fromtimestamp(ns // _NS_PER_S, UTC).strftime("%Y-%m-%d")


def bucket_start_ns(ns: int, bucket_s: int) -> int:
    seconds = ns // _NS_PER_S
    return (seconds - seconds % bucket_s) * _NS_PER_S


def rollup_key(bucket_ns: int, service: str, method: str, kind: str) -> tuple[str, str]:
    """(pk, sk) of a rollup item."""
    moment = datetime.fromtimestamp(bucket_ns // _NS_PER_S, UTC)
    return (
        f"r#{moment:%Y-%m-%d}",
        f"{moment:%H:%M}#{_escape(service)}#{_escape(method)}#{kind}",
    )


def marker_key(message_id: str, chunk: int) -> tuple[str, str]:
    return f"m#{message_id}", f"{chunk:04d}"


@dataclass(slots=True)
class Update:
    """Counters to ADD to one rollup item (and, for query items, how many
    of its texts may be new to the item)."""

    pk: str
    sk: str
    service: str
    method: str
    bucket_ns: int
    adds: Counter[str] = field(default_factory=Counter)


def deltas(
    events: Iterable[analytics_pb2.AnalyticsEvent], *, bucket_s: int
) -> dict[tuple[str, str], Update]:
    """The rollup counters ``events`` add, by item key. A pure function of
    the events (not of the time they are ingested), so a redelivery computes
    the same deltas."""
    updates: dict[tuple[str, str], Update] = {}

    def update(bucket: int, event: analytics_pb2.AnalyticsEvent, kind: str) -> Update:
        key = rollup_key(bucket, event.service, event.method, kind)
        if key not in updates:
            updates[key] = Update(key[0], key[1], event.service, event.method, bucket)
        return updates[key]

    for event in events:
        bucket = bucket_start_ns(event.occurred_at.ToNanoseconds(), bucket_s)
        series = update(bucket, event, SERIES).adds
        series["n"] += 1
        processing_us = event.processing_time.seconds * 1_000_000 + (
            event.processing_time.nanos // 1000
        )
        series["us"] += processing_us
        series[f"h:{histogram_bucket(processing_us / 1000)}"] += 1
        if event.status_code:
            series[f"e:{event.status_code}"] += 1
        model = _bounded(event.model, NAME_MAX_CHARS)
        series[f"mc:{model}"] += 1
        series[f"mt:{model}"] += event.token_count
        for skill in {_bounded(s.name, NAME_MAX_CHARS) for s in event.matched_skills}:
            if skill:
                series[f"s:{skill}"] += 1
        query = normalise_query(event.query)
        if query:
            shard = int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) % QUERY_SHARDS
            update(bucket, event, f"{QUERIES}{shard}").adds[f"q:{query}"] += 1
    for item in updates.values():
        # Zero adds change nothing (a model with no tokens): leave them out.
        item.adds = Counter({k: v for k, v in item.adds.items() if v})
    return updates


def split(updates: Iterable[Update]) -> list[Update]:
    """Updates with at most UPDATE_MAX_COUNTERS counters each, in a fixed order."""
    out: list[Update] = []
    for item in sorted(updates, key=lambda u: (u.pk, u.sk)):
        names = sorted(item.adds)
        for start in range(0, max(len(names), 1), UPDATE_MAX_COUNTERS):
            part = names[start : start + UPDATE_MAX_COUNTERS]
            out.append(
                Update(
                    item.pk,
                    item.sk,
                    item.service,
                    item.method,
                    item.bucket_ns,
                    Counter({n: item.adds[n] for n in part}),
                )
            )
    return out


def chunks(updates: Sequence[Update]) -> list[list[Update]]:
    """Transactions' worth of updates: at most TRANSACTION_UPDATES each, one
    update per item per transaction (DynamoDB refuses two), deterministic."""
    out: list[list[Update]] = []
    current: list[Update] = []
    keys: set[tuple[str, str]] = set()
    for update in updates:
        key = (update.pk, update.sk)
        if len(current) == TRANSACTION_UPDATES or key in keys:
            out.append(current)
            current, keys = [], set()
        current.append(update)
        keys.add(key)
    if current:
        out.append(current)
    return out


# -- reading ----------------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    """Rollup items added up over a range."""

    event_count: int = 0
    processing_us: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    histogram: Counter[int] = field(default_factory=Counter)
    skills: Counter[str] = field(default_factory=Counter)
    queries: Counter[str] = field(default_factory=Counter)
    other_queries: int = 0
    model_events: Counter[str] = field(default_factory=Counter)
    model_tokens: Counter[str] = field(default_factory=Counter)
    # bucket start (ns) -> (events, errors)
    volume: dict[int, list[int]] = field(default_factory=dict)
    # bucket start (ns) -> that bucket's latency histogram (percentiles over time)
    bucket_histograms: dict[int, Counter[int]] = field(default_factory=dict)

    def add_item(self, item: Mapping[str, Any], bucket_ns: int) -> None:
        """Add one rollup item (low-level AttributeValues) to the totals."""
        if is_query_item(item[ROLLUP_SORT]["S"]):
            for name, value in item.items():
                if name.startswith("q:"):
                    self.queries[name[2:]] += int(value["N"])
            self.other_queries += int(item.get("qo", {}).get("N", "0"))
            return
        count = int(item.get("n", {}).get("N", "0"))
        self.event_count += count
        self.processing_us += int(item.get("us", {}).get("N", "0"))
        errors = 0
        bucket_histogram = self.bucket_histograms.setdefault(bucket_ns, Counter())
        for name, value in item.items():
            if "N" not in value:
                continue
            amount = int(value["N"])
            kind, _, rest = name.partition(":")
            if not rest:
                continue
            if kind == "e":
                self.errors[int(rest)] += amount
                errors += amount
            elif kind == "h":
                self.histogram[int(rest)] += amount
                bucket_histogram[int(rest)] += amount
            elif kind == "s":
                self.skills[rest] += amount
            elif kind == "mc":
                self.model_events[rest] += amount
            elif kind == "mt":
                self.model_tokens[rest] += amount
        volume = self.volume.setdefault(bucket_ns, [0, 0])
        volume[0] += count
        volume[1] += errors


def is_query_item(sk: str) -> bool:
    """Whether a rollup item's sort key is a query-text item's."""
    return sk.rsplit("#", 1)[-1].startswith(QUERIES)


def parse_bucket_ns(pk: str, sk: str) -> int:
    """The bucket start of a rollup item's key."""
    day = pk.removeprefix("r#")
    moment = datetime.strptime(f"{day} {sk[:5]}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS_PER_S


def series_of(sk: str) -> tuple[str, str]:
    """(service, method) of a rollup item's sort key."""
    _, service, method, _ = sk.split("#")
    return _unescape(service), _unescape(method)
