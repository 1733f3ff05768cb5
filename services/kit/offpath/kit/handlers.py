"""What a grpc.aio server interceptor needs to wrap a method's handler and
to tell the status a call ended with. Shared by the RPC metrics interceptor
(:mod:`offpath.kit.rpcmetrics`) and the analytics interceptor
(:mod:`offpath.emitter.interceptor`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import grpc
import structlog

from offpath.kit.logs import Throttle

_log = structlog.get_logger("offpath.rpc")

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
else:
    # Not subscriptable at run time (grpc-stubs make them generic).
    Context = grpc.aio.ServicerContext
    _ServerInterceptor = grpc.aio.ServerInterceptor

# grpc-stubs type handler behaviours with the sync ServicerContext; a grpc.aio
# behaviour is called with a grpc.aio one.
Behaviour = Callable[..., Any]

# A call cancelled with less than this left before its deadline is taken to
# have hit the deadline: the server's deadline timer and the client's own
# cancellation race by a few milliseconds at most.
DEADLINE_SLACK_S: Final = 0.05

_FACTORIES: Final[dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def factory_of(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> Callable[..., grpc.RpcMethodHandler[Any, Any]]:
    """The grpc function that makes handlers of ``handler``'s kind
    (``grpc.unary_unary_rpc_method_handler``, ...)."""
    return _FACTORIES[streaming(handler)]


def streaming(handler: grpc.RpcMethodHandler[Any, Any]) -> tuple[bool, bool]:
    """(request streaming, response streaming)."""
    return (handler.request_streaming, handler.response_streaming)


def behaviour_of(handler: grpc.RpcMethodHandler[Any, Any]) -> Behaviour | None:
    """The function grpc calls for ``handler``, whichever its kind."""
    return {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[streaming(handler)]


def kind_of(
    handler: grpc.RpcMethodHandler[Any, Any], behaviour: Behaviour
) -> Literal["coroutine", "generator"] | None:
    """How grpc.aio runs ``behaviour``, by the tests it makes itself: a
    coroutine function (a unary response, or a stream written with
    ``context.write``), an async generator (a stream of yielded responses),
    or None for anything else (a sync handler, run in grpc's thread pool with
    a different context object: wrappers leave it alone)."""
    if inspect.iscoroutinefunction(behaviour):
        return "coroutine"
    if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
        return "generator"
    return None


def rebuilt(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrapped: Behaviour,
    *,
    tolerant: bool = False,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind and (de)serializers calling ``wrapped``;
    ``tolerant``: with :func:`tolerant_deserializer` around the request's."""
    deserializer = handler.request_deserializer
    if tolerant and deserializer is not None:
        deserializer = tolerant_deserializer(deserializer)
    return _FACTORIES[streaming(handler)](
        wrapped,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def wrapped(
    handler: Handler,
    coroutine: Callable[[Behaviour], Behaviour],
    generator: Callable[[Behaviour], Behaviour],
    *,
    tolerant: bool = False,
) -> Handler:
    """``handler`` with its behaviour wrapped by ``coroutine`` or ``generator``
    (by how grpc.aio runs it, :func:`kind_of`); a handler neither fits (a
    sync one) is returned as it is. ``tolerant`` (for a single request only):
    a request that does not decode reaches the wrapper as an
    :class:`Undecodable` (see :func:`tolerant_deserializer`)."""
    behaviour = behaviour_of(handler)
    if behaviour is None:
        return handler
    tolerant = tolerant and not handler.request_streaming
    kind = kind_of(handler, behaviour)
    if kind == "coroutine":
        return rebuilt(handler, coroutine(behaviour), tolerant=tolerant)
    if kind == "generator":
        return rebuilt(handler, generator(behaviour), tolerant=tolerant)
    return handler


class Undecodable:
    """A request whose bytes did not decode as the method's request message
    (invalid UTF-8 in a string field, a wrong wire type, truncated bytes).
    grpc.aio answers an exception out of a deserializer with UNKNOWN and logs
    a traceback; a wrapper that receives this instead answers
    INVALID_ARGUMENT (:func:`refuse_undecodable`)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize``, returning an :class:`Undecodable` where it raises."""

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return Undecodable(f"{type(exc).__name__}: {exc}")

    return tolerant


async def refuse_undecodable(
    request: Undecodable, method: str, context: Context, throttle: Throttle
) -> None:
    """End the call with INVALID_ARGUMENT and one warning line (a client's
    mistake, not ours: no traceback, and never the bytes it sent), at most
    one a ``throttle`` interval per method: a client or a scanner repeating
    it does not flood the log."""
    allowed, held = throttle.allow(method)
    if allowed:
        extra = {"suppressed": held} if held else {}
        _log.warning("rpc_request_undecodable", method=method, error=request.error, **extra)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request does not decode as {method}'s request message ({request.error})",
    )


class WrappingInterceptor(_ServerInterceptor):
    """A grpc.aio interceptor that wraps each method's handler once
    (:meth:`wrap`) and then hands the wrapped one out from a cache, so an RPC
    costs a dict look-up rather than building handler objects. A generic
    handler may accept any method name a client sends: ``max_cached`` keeps
    such names from growing the cache without limit (past it, handlers are
    wrapped per call, which is only slower)."""

    def __init__(self, max_cached: int) -> None:
        self._max_cached = max_cached
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: grpc answers UNIMPLEMENTED itself. (grpc-stubs
            # say a handler is always found; at run time it is None here.)
            return handler  # type: ignore[return-value]
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        result = self.wrap(method, handler)
        if len(self._cache) < self._max_cached or method in self._cache:
            self._cache[method] = (handler, result)
        return result

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler to serve ``method`` with instead of ``handler``."""
        raise NotImplementedError


def returned_code(context: Context) -> grpc.StatusCode:
    """The status of a call whose handler returned: OK unless it set a code."""
    code: object = context.code()  # None unless the handler set one
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def failed_code(context: Context) -> grpc.StatusCode:
    """The status of a call whose handler raised (an abort raises after
    setting its code): grpc.aio's rule, the code set before raising unless
    that is OK (or none), in which case UNKNOWN."""
    code: object = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.UNKNOWN


def cancelled_code(context: Context) -> grpc.StatusCode:
    """The status of a call cut short: DEADLINE_EXCEEDED when its deadline has
    (all but) passed, else CANCELLED (the client went away)."""
    remaining: float | None = context.time_remaining()
    if remaining is not None and remaining < DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
