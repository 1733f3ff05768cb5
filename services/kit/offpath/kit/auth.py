"""Bearer-token authentication for a gRPC service's methods.

:class:`BearerTokenInterceptor` guards the methods of the services it is
given (AnalyticsIngest's read API): a call must carry the metadata
``authorization: Bearer <token>`` with one of the configured tokens, or it
ends UNAUTHENTICATED before its handler runs. Every other service of the
server (health, reflection) stays open, so probes and ``buf curl``
discovery need no token.

The presented token is compared with every configured one through
``hmac.compare_digest`` on SHA-256 digests: each comparison takes the same
time whatever the token, its length included, and all of them are made, so
neither which token matched nor how much of one did shows in the timing.
Listing two tokens lets clients move from the old one to the new one before
the old one is removed (rotation without a window where calls fail).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import grpc
import structlog

from offpath.kit.handlers import factory_of
from offpath.kit.logs import Throttle

if TYPE_CHECKING:
    from offpath.kit.handlers import Context, Continuation, Handler

    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

log = structlog.get_logger("offpath.auth")

METADATA_KEY: Final = "authorization"
SCHEME: Final = "bearer"

MISSING: Final = "missing"
MALFORMED: Final = "malformed"
REJECTED: Final = "rejected"

_MESSAGES: Final = {
    MISSING: "this method needs the metadata `authorization: Bearer <token>`",
    MALFORMED: "the authorization metadata must read `Bearer <token>`",
    REJECTED: "the bearer token is not accepted",
}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BearerTokenInterceptor(_ServerInterceptor):
    """Require ``authorization: Bearer <token>`` (one of ``tokens``) on every
    method of ``services`` (full names, such as ``offpath.v1.AnalyticsIngest``);
    leave the server's other services alone."""

    def __init__(self, tokens: Iterable[str], services: Iterable[str]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)
        if not self._digests:
            raise ValueError("a bearer token interceptor needs at least one token")
        self._prefixes = tuple(f"/{service}/" for service in services)
        # Per method: the handler gRPC found and the refusing one built from it.
        self._refusals: dict[str, tuple[Handler, Handler]] = {}
        # At most a refusal line a second per method and reason.
        self._log_throttle = Throttle()

    def accepts(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """None when ``metadata`` carries an accepted token; else why not
        (:data:`MISSING`, :data:`MALFORMED` or :data:`REJECTED`)."""
        values = [value for key, value in metadata or () if key == METADATA_KEY]
        if not values:
            return MISSING
        # One authorization header only: two would leave which one counts to
        # whoever reads them next.
        if len(values) != 1 or not isinstance(values[0], str):
            return MALFORMED
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != SCHEME or not token:
            return MALFORMED
        presented = _digest(token)
        matched = False
        for digest in self._digests:
            # No early exit: every configured token is compared every time.
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else REJECTED

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(self._prefixes):
            # None: an unknown method, which grpc answers UNIMPLEMENTED itself
            # (grpc-stubs say a handler is always found).
            return handler  # type: ignore[return-value]
        reason = self.accepts(handler_call_details.invocation_metadata)
        if reason is None:
            return handler
        return self._refusal(method, handler, reason)

    def _refusal(self, method: str, handler: Handler, reason: str) -> Handler:
        """A handler of ``handler``'s kind that ends the call UNAUTHENTICATED
        (so the RPC metrics interceptor around this one counts it). It leaves
        the request undecoded: nothing of an unauthenticated caller's is
        parsed."""
        key = f"{method}:{reason}"
        cached = self._refusals.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        message = _MESSAGES[reason]
        throttle = self._log_throttle

        async def refuse(request: Any, context: Context) -> None:
            # The peer, the method and why: never the metadata's value; at
            # most a line a second per method and reason.
            allowed, held = throttle.allow((method, reason))
            if allowed:
                log.warning(
                    "rpc_unauthenticated",
                    method=method,
                    reason=reason,
                    peer=context.peer(),
                    **({"suppressed": held} if held else {}),
                )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        refusal: Handler = factory_of(handler)(
            refuse, request_deserializer=None, response_serializer=handler.response_serializer
        )
        self._refusals[key] = (handler, refusal)
        return refusal
