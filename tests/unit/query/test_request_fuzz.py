"""QueryService under hostile input: property-based requests (hypothesis)
over every field, and raw bytes that are not a QueryRequest, sent to the
server the service runs (offpath.kit.server.serve with the RPC metrics and
analytics interceptors, the 1 MiB message limit, health) on a free port.

Every call ends with the status the contract gives it (OK for a valid
question, INVALID_ARGUMENT for a bad one, RESOURCE_EXHAUSTED for a message
over the limit), never UNKNOWN, INTERNAL or UNAVAILABLE, and the service is
still SERVING and answering afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offpath.emitter import AnalyticsInterceptor
from offpath.kit.rpcmetrics import RpcMetrics
from offpath.query.engine import SkillIndex
from offpath.query.generator import TemplateGenerator
from offpath.query.servicer import MAX_QUERY_CHARS, MAX_TOP_K, SERVICE_NAME, QueryServicer
from offpath.testing.recorders import ListRecorder
from offpath.testing.serving import assert_serving, serving
from offpath.v1 import query_pb2, query_pb2_grpc

METHOD = f"/{SERVICE_NAME}/Query"
MAX_MESSAGE_BYTES = 1024 * 1024  # offpath.kit.server's receive limit
TIMEOUT_S = 10.0

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the checkout
    # One server for all of a test's examples, on purpose: it must survive them all.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Codes a client's input may earn; anything else is a server fault.
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass
class Served:
    channel: grpc.aio.Channel
    recorder: ListRecorder

    @property
    def stub(self) -> query_pb2_grpc.QueryServiceAsyncStub:
        return query_pb2_grpc.QueryServiceStub(self.channel)

    async def healthy(self) -> None:
        """SERVING by health, and a plain question still answered."""
        await assert_serving(self.channel, SERVICE_NAME, TIMEOUT_S)
        answer = await self.stub.Query(
            query_pb2.QueryRequest(query="Does she know Kubernetes?"), timeout=TIMEOUT_S
        )
        assert answer.matched_skills


@pytest.fixture(scope="module")
def index() -> SkillIndex:
    return SkillIndex.default()


@pytest.fixture
async def served(index: SkillIndex) -> AsyncIterator[Served]:
    """QueryService as main.py assembles it (analytics to a list recorder),
    served by serve() on 127.0.0.1:<free port>; stopped afterwards."""
    metrics = RpcMetrics()
    recorder = ListRecorder()
    servicer = QueryServicer(index, TemplateGenerator())
    async with serving(
        SERVICE_NAME,
        lambda s: query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, s),
        interceptors=[metrics.interceptor, AnalyticsInterceptor(recorder)],
        activity=metrics.activity,
    ) as channel:
        yield (service := Served(channel, recorder))
        # Every test ends here: whatever it sent, the service still serves.
        await service.healthy()


async def call(served: Served, request: query_pb2.QueryRequest) -> grpc.StatusCode:
    """The status of one Query, checking an error's message is a message."""
    try:
        await served.stub.Query(request, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        return grpc.StatusCode.OK
    details = error.details() or ""
    assert details, f"{error.code()} without a message"
    assert "Traceback" not in details, details
    assert len(details) < 500, details
    return error.code()


def expected(request: query_pb2.QueryRequest) -> grpc.StatusCode:
    """The contract: a non-blank question of at most MAX_QUERY_CHARS (after
    trimming) and top_k unset, 0 or 1..MAX_TOP_K; a message over the limit
    is refused before it is read."""
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    query = request.query.strip()
    top_k_ok = not request.HasField("top_k") or 0 <= request.top_k <= MAX_TOP_K
    if query and len(query) <= MAX_QUERY_CHARS and top_k_ok:
        return grpc.StatusCode.OK
    return grpc.StatusCode.INVALID_ARGUMENT


# Text: any (control characters, combining marks, astral planes), blank,
# control characters only, near MAX_QUERY_CHARS, and near the message limit.
_controls = st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=64)
_sizes = st.sampled_from(
    [
        MAX_QUERY_CHARS - 1,
        MAX_QUERY_CHARS,
        MAX_QUERY_CHARS + 1,
        MAX_MESSAGE_BYTES - 16,
        MAX_MESSAGE_BYTES - 4,  # the largest query that fits: 1 tag + 3 length bytes
        MAX_MESSAGE_BYTES,
    ]
)
_long = st.builds(
    lambda n, ch, pad: (pad + ch * n)[:n],
    _sizes,
    st.sampled_from(["x", "é", "\u00a0", " ", "\x00"]),
    st.sampled_from(["", "  ", "skills?"]),
)
QUERIES = st.one_of(
    st.text(max_size=300),
    st.just(""),
    _controls,
    st.text(st.characters(min_codepoint=0x10000), max_size=40),
    _long,
)
TOP_KS = st.one_of(
    st.none(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-2, max_value=MAX_TOP_K + 2),
)


@FUZZ
@given(query=QUERIES, top_k=TOP_KS)
async def test_any_request_gets_its_contract_status(
    served: Served, query: str, top_k: int | None
) -> None:
    """Every QueryRequest, valid or not, ends with the status the contract
    says (never UNKNOWN/INTERNAL/UNAVAILABLE); the service stays healthy."""
    request = query_pb2.QueryRequest(query=query)
    if top_k is not None:
        request.top_k = top_k
    code = await call(served, request)
    assert code in CLIENT_CODES
    assert code == expected(request)


@FUZZ
@given(raw=st.binary(max_size=256))
async def test_any_bytes_get_ok_or_invalid_argument(served: Served, raw: bytes) -> None:
    """Arbitrary bytes as a request: OK if they happen to decode to a valid
    question, INVALID_ARGUMENT otherwise, never a server fault."""
    code = await _raw(served, raw)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, code


async def _raw(served: Served, raw: bytes) -> grpc.StatusCode:
    # No serializers: the bytes go on the wire as they are.
    method = served.channel.unary_unary(METHOD, None, None)
    try:
        await method(raw, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        return grpc.StatusCode.OK
    assert "Traceback" not in (error.details() or "")
    return error.code()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x0a\x02\xff\xfe", "query is not UTF-8"),
        (b"\x0a\x05hi", "query's length runs past the end"),
        (b"\x0a", "a tag with no length"),
        (b"\x10" + b"\xff" * 10, "a varint of more than 10 bytes"),
        (b"\x0a\x03abc\x0f", "a group end with no start"),
    ],
)
async def test_undecodable_request_is_invalid_argument(
    served: Served, raw: bytes, why: str
) -> None:
    """A message that does not decode is the client's error (INVALID_ARGUMENT),
    and reaches no servicer: no analytics event is recorded for it."""
    recorded = len(served.recorder.records)
    assert await _raw(served, raw) == grpc.StatusCode.INVALID_ARGUMENT, why
    assert len(served.recorder.records) == recorded


async def test_top_k_wider_than_int32_on_the_wire_is_invalid_argument(served: Served) -> None:
    """A varint wider than int32 for top_k decodes truncated (proto3 rules);
    what it truncates to is out of range here, so INVALID_ARGUMENT."""
    huge = (2**63 - 1).to_bytes(8, "little")
    varint = bytearray()
    value = int.from_bytes(huge, "little")
    while True:
        byte, value = value & 0x7F, value >> 7
        varint.append(byte | (0x80 if value else 0))
        if not value:
            break
    raw = b"\x0a\x02hi\x10" + bytes(varint)
    assert query_pb2.QueryRequest.FromString(raw).top_k == -1  # what the server decodes
    assert await _raw(served, raw) == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_is_healthy_after_the_fuzz(served: Served) -> None:
    """A burst of bad requests, 40 at once, leaves the service SERVING and
    answering (every test here ends with that check, in the fixture)."""
    bad = [
        query_pb2.QueryRequest(query=""),
        query_pb2.QueryRequest(query="x" * (MAX_QUERY_CHARS + 1)),
        query_pb2.QueryRequest(query="ok?", top_k=-(2**31)),
        query_pb2.QueryRequest(query=" \t\n\u2028\u3000"),
    ]
    codes = await asyncio.gather(*(call(served, r) for r in bad * 10))
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}


@pytest.mark.parametrize(
    ("size", "code"),
    [
        (MAX_MESSAGE_BYTES - 4, grpc.StatusCode.INVALID_ARGUMENT),
        (MAX_MESSAGE_BYTES - 3, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_message_limit_is_one_mebibyte(
    served: Served, size: int, code: grpc.StatusCode
) -> None:
    """A request of exactly 1 MiB is read (and refused for its length); one
    byte more is refused unread, RESOURCE_EXHAUSTED."""
    request = query_pb2.QueryRequest(query="x" * size)
    assert request.ByteSize() == size + 4  # tag, 3-byte length, text
    assert await call(served, request) == code
