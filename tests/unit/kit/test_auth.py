"""offpath.kit.auth.BearerTokenInterceptor: which metadata it accepts, that it
compares in constant time against every token, and, on a real grpc.aio server,
that it refuses the guarded service's calls without a good token while other
services stay open."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from offpath.kit.auth import MALFORMED, MISSING, REJECTED, BearerTokenInterceptor

TOKEN_A = "a" * 32
TOKEN_B = "b" * 40
GUARDED = "offpath.test.Guarded"
OPEN = "offpath.test.Open"
TIMEOUT_S = 5.0


def _interceptor(*tokens: str) -> BearerTokenInterceptor:
    return BearerTokenInterceptor(tokens or (TOKEN_A,), [GUARDED])


class TestAccepts:
    @pytest.mark.parametrize("token", [TOKEN_A, TOKEN_B])
    def test_each_configured_token_is_accepted(self, token: str) -> None:
        """With two tokens (a rotation), either one is accepted."""
        interceptor = _interceptor(TOKEN_A, TOKEN_B)
        assert interceptor.accepts([("authorization", f"Bearer {token}")]) is None

    def test_scheme_is_case_insensitive(self) -> None:
        """RFC 6750's scheme name is matched case-insensitively."""
        assert _interceptor().accepts([("authorization", f"bearer {TOKEN_A}")]) is None

    @pytest.mark.parametrize(
        ("metadata", "reason"),
        [
            (None, MISSING),
            ([], MISSING),
            ([("x-other", "Bearer " + TOKEN_A)], MISSING),
            ([("authorization", TOKEN_A)], MALFORMED),
            ([("authorization", f"Basic {TOKEN_A}")], MALFORMED),
            ([("authorization", "Bearer ")], MALFORMED),
            ([("authorization", f"Bearer {TOKEN_A}")] * 2, MALFORMED),
            ([("authorization", "Bearer " + "c" * 32)], REJECTED),
            ([("authorization", "Bearer " + TOKEN_A[:-1])], REJECTED),
            ([("authorization", "Bearer " + TOKEN_A + "a")], REJECTED),
        ],
    )
    def test_refusals_say_why(self, metadata: list[tuple[str, str]] | None, reason: str) -> None:
        """No header, one that is not `Bearer <token>` (or two), and an unknown
        token (a prefix or an extension of a good one included) are refused."""
        assert _interceptor().accepts(metadata) == reason

    @pytest.mark.parametrize("presented", [TOKEN_A, TOKEN_B, "c" * 32])
    def test_every_token_is_compared_in_constant_time(
        self, monkeypatch: pytest.MonkeyPatch, presented: str
    ) -> None:
        """hmac.compare_digest runs once per configured token whichever matches
        (none, the first, the last), on equal-length digests, never the tokens."""
        calls: list[tuple[bytes, bytes]] = []
        compare = hmac.compare_digest

        def recording(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return compare(a, b)

        monkeypatch.setattr(hmac, "compare_digest", recording)
        reason = _interceptor(TOKEN_A, TOKEN_B).accepts([("authorization", f"Bearer {presented}")])
        assert reason == (REJECTED if presented.startswith("c") else None)
        assert len(calls) == 2
        assert all(len(a) == len(b) == 32 for a, b in calls)
        assert all(presented.encode() not in (a, b) for a, b in calls)

    def test_needs_a_token(self) -> None:
        """An interceptor with no token would refuse everything: not built."""
        with pytest.raises(ValueError, match="at least one token"):
            BearerTokenInterceptor([], [GUARDED])


async def _echo(request: bytes, context: Any) -> bytes:
    return request


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A server with a guarded and an open service, the interceptor on both."""
    server = grpc.aio.server(interceptors=[_interceptor(TOKEN_A, TOKEN_B)])
    for service in (GUARDED, OPEN):
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
                ),
            )
        )
    bound = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield bound
    await server.stop(None)


async def _call(port: int, service: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(
            f"/{service}/Echo", request_serializer=None, response_deserializer=None
        )
        reply: bytes = await echo(b"ping", metadata=metadata, timeout=TIMEOUT_S)
        return reply


class TestOverTheWire:
    async def test_guarded_service_serves_a_good_token(self, port: int) -> None:
        """With `authorization: Bearer <token>` the call reaches its handler."""
        assert await _call(port, GUARDED, (("authorization", f"Bearer {TOKEN_B}"),)) == b"ping"

    @pytest.mark.parametrize(
        ("metadata", "message"),
        [
            ((), "needs the metadata `authorization: Bearer <token>`"),
            ((("authorization", "Bearer " + "c" * 32),), "the bearer token is not accepted"),
            ((("authorization", "c" * 32),), "must read `Bearer <token>`"),
        ],
    )
    async def test_guarded_service_refuses_unauthenticated(
        self, port: int, metadata: tuple[tuple[str, str], ...], message: str
    ) -> None:
        """Without a token, or with a wrong one, the call ends UNAUTHENTICATED
        with a message saying what is expected and never echoing the token;
        one warning line says which method and why, without the token."""
        with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(port, GUARDED, metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in (caught.value.details() or "")
        assert "c" * 32 not in (caught.value.details() or "")
        (line,) = [entry for entry in logs if entry["event"] == "rpc_unauthenticated"]
        assert line["log_level"] == "warning"
        assert line["method"] == f"/{GUARDED}/Echo"
        assert "c" * 32 not in repr(line)
        assert TOKEN_A not in repr(line)

    async def test_other_services_stay_open(self, port: int) -> None:
        """A service the interceptor does not guard needs no token."""
        assert await _call(port, OPEN) == b"ping"

    async def test_unknown_method_is_unimplemented(self, port: int) -> None:
        """A method the server lacks is UNIMPLEMENTED, token or not."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            nothing = channel.unary_unary(
                f"/{GUARDED}/Nothing", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await nothing(b"", timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
