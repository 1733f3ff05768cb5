"""Which event ids reached the store: the check behind ``offpath reconcile``.

Given the ids a load received (one per reply), it reads the store through the
read API and sorts them into delivered and missing, and says which ids the
file holds more than once.

How, cheaply and exactly: the ids are UUIDv7, so each carries the
millisecond it was made (the interceptor makes it as the RPC starts, when it
also stamps ``occurred_at``). The ids' times, grouped where they lie close,
give a few time ranges; ``ListEvents`` over them reads up to 1,000 events a
call, where ``GetEvent`` would take one call per id. The time index behind
``ListEvents`` is eventually consistent and the range may hold other
traffic, so the listing only settles what it found; every id it did not
find is then asked for with ``GetEvent`` (a consistent read), a bounded
number in flight. An id is missing only when ``GetEvent`` says NOT_FOUND.

What "duplicated" can mean here: events are stored one item per event id (a
redelivery overwrites), so the same id stored twice is impossible by the
table's key. What can be checked is an id that appears twice in the file
(the load got one id on two replies, or files were concatenated), and an id
the time index lists twice (expected never; counted as a check of the index).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import grpc

from offpath.client.aio import AsyncOffpathClient

DEFAULT_CONCURRENCY: Final = 16
# ListEvents' largest page.
_LIST_PAGE: Final = 1000
# occurred_at and the id's time come from the same clock a few microseconds
# apart; the margin covers that and a coarse clock.
_MARGIN: Final = timedelta(seconds=5)
# Ids further apart than this are listed as separate ranges, so a file of two
# loads a day apart does not list the whole day in between.
_GAP: Final = timedelta(minutes=1)
# Listing reads at most this many events per id sought (other traffic in the
# range costs reads); beyond it, the remaining ids are asked for one by one.
_LIST_BUDGET_PER_ID: Final = 10
_LIST_BUDGET_MIN: Final = 10_000
# Between rounds of asking again for missing ids (``wait_s``).
_RETRY_INTERVAL_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class IdFile:
    """The ids of a file, in order, canonical (lower case); lines that are
    not UUIDs apart."""

    ids: list[str]
    invalid: list[str]


def read_ids(lines: Iterable[str]) -> IdFile:
    """One id per line; blank lines and ``#`` comments skipped."""
    ids: list[str] = []
    invalid: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            ids.append(str(uuid.UUID(text)))
        except ValueError:
            invalid.append(text)
    return IdFile(ids, invalid)


def id_time(event_id: str) -> datetime | None:
    """When a UUIDv7 was made (its first 48 bits: Unix milliseconds); None
    for other UUIDs."""
    value = uuid.UUID(event_id)
    if value.version != 7:
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


def time_ranges(times: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """[start, end) ranges covering ``times`` with a margin, one per group of
    times no more than a minute apart."""
    ranges: list[tuple[datetime, datetime]] = []
    for moment in sorted(times):
        if ranges and moment - _MARGIN - ranges[-1][1] <= _GAP:
            ranges[-1] = (ranges[-1][0], moment + _MARGIN)
        else:
            ranges.append((moment - _MARGIN, moment + _MARGIN))
    return ranges


@dataclass
class Reconciliation:
    """The ids of a file against the store."""

    ids: int  # valid ids read, repeats included
    distinct: int
    repeated: dict[str, int] = field(default_factory=dict)  # id -> times in the file
    invalid: list[str] = field(default_factory=list)
    delivered: int = 0
    missing: list[str] = field(default_factory=list)
    # Ids the time index listed more than once (never expected: one item per id).
    listed_twice: list[str] = field(default_factory=list)
    listed_events: int = 0  # events ListEvents returned, ours and other traffic
    # A ListEvents page hit the deadline: the rest was read with GetEvent.
    listing_cut_short: bool = False
    get_calls: int = 0

    @property
    def delivered_percent(self) -> float:
        """Delivered as a share of the distinct ids, rounded down to 0.01 %,
        so anything missing never shows as 100 %."""
        if not self.distinct:
            return 100.0
        return math.floor(self.delivered * 10_000 / self.distinct) / 100


async def reconcile(
    client: AsyncOffpathClient,
    ids: IdFile,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    wait_s: float = 0.0,
) -> Reconciliation:
    """Sort ``ids`` into delivered and missing; ask again for the missing
    ones for up to ``wait_s`` (events still on their way)."""
    counts = Counter(ids.ids)
    result = Reconciliation(
        ids=len(ids.ids),
        distinct=len(counts),
        repeated={i: n for i, n in counts.items() if n > 1},
        invalid=list(ids.invalid),
    )
    found = await _listed(client, set(counts), result)
    unresolved = sorted(set(counts) - found)
    deadline = time.monotonic() + wait_s
    while True:
        unresolved = await _not_found(client, unresolved, concurrency, result)
        if not unresolved or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(_RETRY_INTERVAL_S, max(0.0, deadline - time.monotonic())))
    result.missing = unresolved
    result.delivered = result.distinct - len(unresolved)
    return result


async def _listed(client: AsyncOffpathClient, wanted: set[str], result: Reconciliation) -> set[str]:
    """The wanted ids ListEvents finds over the ids' time ranges, within the
    read budget."""
    times = [t for t in (id_time(i) for i in wanted) if t is not None]
    budget = max(_LIST_BUDGET_MIN, _LIST_BUDGET_PER_ID * len(wanted))
    listed: Counter[str] = Counter()
    try:
        for start, end in time_ranges(times):
            async for event in client.list_events(start=start, end=end, page_size=_LIST_PAGE):
                result.listed_events += 1
                event_id = event.event_id.lower()
                if event_id in wanted:
                    listed[event_id] += 1
                if result.listed_events >= budget:
                    break
            if result.listed_events >= budget:
                break
    except grpc.RpcError as exc:
        # A page that took longer than the deadline (a large range on a slow
        # store): what was not listed is asked for one by one instead.
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        result.listing_cut_short = True
    result.listed_twice = sorted(i for i, n in listed.items() if n > 1)
    return set(listed)


async def _not_found(
    client: AsyncOffpathClient, ids: list[str], concurrency: int, result: Reconciliation
) -> list[str]:
    """The ids GetEvent answers NOT_FOUND for, ``concurrency`` calls in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def stored(event_id: str) -> bool:
        async with gate:
            result.get_calls += 1
            try:
                await client.get_event(event_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

    answers = await asyncio.gather(*(stored(i) for i in ids))
    return [i for i, ok in zip(ids, answers, strict=True) if not ok]
