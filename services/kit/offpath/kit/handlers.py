"""What a grpc.aio server interceptor needs to wrap a method's handler and
to tell the status a call ended with. Shared by the RPC metrics interceptor
(:mod:`offpath.kit.rpcmetrics`) and the analytics interceptor
(:mod:`offpath.emitter.interceptor`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    # Not subscriptable at run time (grpc-stubs make it generic).
    Context = grpc.aio.ServicerContext

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
    handler: grpc.RpcMethodHandler[Any, Any], wrapped: Behaviour
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind and (de)serializers calling ``wrapped``."""
    return _FACTORIES[streaming(handler)](
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


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
