"""Bad gRPC input on both services: raw request bytes a protobuf library
would never produce, and well-formed requests with values out of range, each
with the status it must get. Random bytes (a fixed seed) follow; for those
any client-error answer is right, a server error (UNKNOWN, INTERNAL) never.

Calls go through a generic channel with the identity serializer, so the
bytes reach the server exactly as written here.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.v1 import ingest_pb2, query_pb2

QUERY = "/offpath.v1.QueryService/Query"
GET_EVENT = "/offpath.v1.AnalyticsIngest/GetEvent"
LIST_EVENTS = "/offpath.v1.AnalyticsIngest/ListEvents"
GET_SUMMARY = "/offpath.v1.AnalyticsIngest/GetSummary"
INGEST_METHODS = (GET_EVENT, LIST_EVENTS, GET_SUMMARY)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Answers that say "your request": right for random bytes, whatever they decode to.
CLIENT_ERRORS = frozenset(
    {grpc.StatusCode.OK, INVALID, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)
# Above the servers' 1 MiB receive limit.
OVERSIZE_BYTES = 2 * 1024 * 1024
FUZZ_PER_METHOD = 60
FUZZ_SEED = 20261127


@dataclass(frozen=True)
class Probe:
    """One request and the statuses that are right for it."""

    service: str  # "query" or "ingest"
    method: str
    what: str
    body: bytes
    expect: frozenset[grpc.StatusCode]


@dataclass
class Answer:
    probe: Probe
    code: grpc.StatusCode
    details: str

    @property
    def ok(self) -> bool:
        return self.code in self.probe.expect and "Traceback" not in self.details


def _stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _raw_probes(service: str, method: str) -> list[Probe]:
    """Bytes no protobuf encoder writes, in field 1 (a string in every
    request here but ListEvents and GetSummary, where it is a Timestamp)."""
    one = frozenset({INVALID})
    return [
        Probe(service, method, "invalid UTF-8 in a string field", b"\x0a\x02\xff\xfe", one),
        Probe(service, method, "truncated length-delimited field", b"\x0a\x05ab", one),
        Probe(service, method, "truncated varint", b"\x10\xff\xff", one),
        Probe(service, method, "field number 0", b"\x02\x00", one),
        Probe(service, method, "end-group without a start", b"\x0c", one),
        Probe(
            service,
            method,
            f"oversize ({OVERSIZE_BYTES // 1024 // 1024} MiB)",
            b"\x0a" + _varint(OVERSIZE_BYTES) + b"a" * OVERSIZE_BYTES,
            frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}),
        ),
    ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def probes() -> list[Probe]:
    """Every probe, both services."""
    one = frozenset({INVALID})
    found: list[Probe] = _raw_probes("query", QUERY)
    for method in INGEST_METHODS:
        found += _raw_probes("ingest", method)
    found += [
        Probe("query", QUERY, "empty query", query_pb2.QueryRequest().SerializeToString(), one),
        Probe(
            "query",
            QUERY,
            "query of 100,000 characters",
            query_pb2.QueryRequest(query="k" * 100_000).SerializeToString(),
            one,
        ),
        Probe(
            "query",
            QUERY,
            "top_k -1",
            query_pb2.QueryRequest(query="kubernetes", top_k=-1).SerializeToString(),
            one,
        ),
        Probe(
            "query",
            QUERY,
            "top_k 2^31-1",
            query_pb2.QueryRequest(query="kubernetes", top_k=2**31 - 1).SerializeToString(),
            one,
        ),
        Probe(
            "query",
            QUERY,
            "a string field given as a varint (wire type 0)",
            b"\x08\x01",
            one,  # decodes as an unknown field: the query is empty
        ),
        Probe(
            "ingest",
            GET_EVENT,
            "event id not a UUID",
            ingest_pb2.GetEventRequest(event_id="../../etc/passwd").SerializeToString(),
            one,
        ),
        Probe("ingest", GET_EVENT, "empty event id", b"", one),
        Probe(
            "ingest",
            GET_EVENT,
            "event id of 1 MB minus a little",
            ingest_pb2.GetEventRequest(event_id="e" * 1_000_000).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            GET_EVENT,
            "absent event",
            ingest_pb2.GetEventRequest(event_id=str(uuid.uuid4())).SerializeToString(),
            frozenset({grpc.StatusCode.NOT_FOUND}),
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "start after end",
            ingest_pb2.ListEventsRequest(
                start_time=_stamp(2_000_000_000), end_time=_stamp(1_000_000_000)
            ).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "page_size -5",
            ingest_pb2.ListEventsRequest(page_size=-5).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "page_size 2^31-1",
            ingest_pb2.ListEventsRequest(page_size=2**31 - 1).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "forged page token",
            ingest_pb2.ListEventsRequest(page_token="not-a-token").SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "nanos out of range",
            ingest_pb2.ListEventsRequest(
                start_time=_stamp(1_000_000_000, 2_000_000_000)
            ).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            LIST_EVENTS,
            "a year-10000 end time",
            ingest_pb2.ListEventsRequest(end_time=_stamp(253_402_300_800 + 10)).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            GET_SUMMARY,
            "start after end",
            ingest_pb2.GetSummaryRequest(
                start_time=_stamp(2_000_000_000), end_time=_stamp(1_000_000_000)
            ).SerializeToString(),
            one,
        ),
        Probe(
            "ingest",
            GET_SUMMARY,
            "ten years",
            ingest_pb2.GetSummaryRequest(
                start_time=_stamp(1_500_000_000), end_time=_stamp(1_815_000_000)
            ).SerializeToString(),
            one,
        ),
    ]
    rng = random.Random(FUZZ_SEED)
    for service, method in (("query", QUERY), *(("ingest", m) for m in INGEST_METHODS)):
        for i in range(FUZZ_PER_METHOD):
            size = rng.choice((1, 2, 3, 5, 8, 16, 64, 512))
            found.append(
                Probe(service, method, f"random bytes #{i}", rng.randbytes(size), CLIENT_ERRORS)
            )
    return found


async def call(channel: grpc.aio.Channel, probe: Probe, timeout_s: float = 10.0) -> Answer:
    method = channel.unary_unary(
        probe.method,
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    try:
        await method(probe.body, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return Answer(probe, exc.code(), exc.details() or "")
    return Answer(probe, grpc.StatusCode.OK, "")


async def serving(channel: grpc.aio.Channel) -> bool:
    """Health says SERVING (the server as a whole)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
