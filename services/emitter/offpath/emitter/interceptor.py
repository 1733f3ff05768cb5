"""A grpc.aio server interceptor that records one event per RPC.

For every RPC it wraps, :class:`AnalyticsInterceptor`:

- mints an event id (UUIDv7) and puts it in the reply's trailing metadata
  ``offpath-event-id``, on success and on every error, so a client can always
  find the event its call produced; metadata the handler sets is kept beside
  it (merged, never replaced). With ``event_id_trailer="errors"`` only
  replies that end in an error carry it (a reply message can carry the id
  itself, as QueryService's does): grpc encodes a fresh, never-repeated
  header value on every OK reply otherwise, the largest part of the
  interceptor's cost per RPC (see the README's Performance section);
- publishes an :class:`~offpath.emitter.rpc.RpcAnalytics` for the handler
  (:func:`~offpath.emitter.rpc.current_rpc`), where it adds its own fields;
- when the call ends, builds one :class:`~offpath.emitter.record.EventRecord`
  (service, full method name, start time, duration, the status code the
  client saw, and the handler's fields) and hands it to the recorder.

The status is the one grpc sends: OK, or the code a handler gave
``context.set_code`` and returned; the code given to ``context.abort``;
for an exception the handler let escape, the code it set before raising or
else UNKNOWN (grpc.aio's own rule); CANCELLED when the client went away, or
DEADLINE_EXCEEDED when the call's deadline has passed. The handler's
exceptions, aborts and cancellations propagate unchanged; the interceptor
only observes them.

Nothing acknowledged is lost: the event is handed to the recorder *before*
the reply leaves. On return (or exception) that is simply before the wrapped
behaviour hands control back to grpc. ``context.abort`` is different: grpc
sends the status from inside ``abort`` itself, before any ``except`` or
``finally`` of the handler or of an interceptor runs. So the handler is given
a thin wrapper of its context whose ``abort`` records the event first and
then calls grpc's ``abort`` (the approach OpenTelemetry's grpc instrumentation
takes to see aborts); every other call is passed straight through.

Which RPCs are recorded: async handlers of all four kinds. Streaming calls are
recorded once, when the call ends (a response stream written by an async
generator is written by the interceptor, exactly as grpc would write it, so
that the end of the stream is seen before the status is sent). Left untouched
(not recorded, no event id): sync handlers, which grpc.aio runs in its thread
pool; the services named in ``ignore_services`` (by default health checks and
server reflection, which are infrastructure, not traffic); methods the server
does not implement (grpc answers UNIMPLEMENTED before any handler runs).

The recorder is anything with ``emit(record)``: :meth:`Emitter.emit
<offpath.emitter.emitter.Emitter.emit>` (O(1), returns a bool) or an async
recorder whose ``emit`` returns an awaitable, which is awaited before the
reply (QueryService's ``blocking`` mode). Analytics never fail an RPC: a
recorder that raises is logged and the reply goes out.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
import structlog

from offpath.emitter.record import EventRecord
from offpath.emitter.rpc import RpcAnalytics, _current, event_record
from offpath.emitter.settings import EVENT_ID_TRAILERS, EventIdTrailer
from offpath.kit.handlers import (
    Behaviour,
    WrappingInterceptor,
    cancelled_code,
    failed_code,
    wrapped,
)
from offpath.kit.ids import new_id
from offpath.kit.logs import event_id_note

log = structlog.get_logger("offpath.emitter")

EVENT_ID_METADATA = "offpath-event-id"

DEFAULT_IGNORED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)

# Wrapped handlers cached per method name (see WrappingInterceptor).
_MAX_CACHED_METHODS = 1024

# StatusCode.value is an enum property returning (int, str): a dict look-up
# is cheaper on the path every RPC takes.
_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
_UNKNOWN = _CODE_NUMBERS[grpc.StatusCode.UNKNOWN]
_OK = grpc.StatusCode.OK


if TYPE_CHECKING:
    _Context = grpc.aio.ServicerContext[Any, Any]
else:
    # Not subscriptable at run time (grpc-stubs make it generic).
    _Context = grpc.aio.ServicerContext[Any, Any]


class Recorder(Protocol):
    """Where the interceptor hands each RPC's event. ``emit`` may return an
    awaitable (then it is awaited before the reply) or anything else (ignored).
    It should not raise; if it does, the error is logged and the RPC goes on."""

    def emit(self, record: EventRecord, /) -> object: ...


class AnalyticsInterceptor(WrappingInterceptor):
    """Records one :class:`EventRecord` per RPC through ``recorder``; see the
    module's docstring for what is recorded and when."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        ignore_services: Iterable[str] = DEFAULT_IGNORED_SERVICES,
        event_id_trailer: EventIdTrailer = "always",
    ) -> None:
        if event_id_trailer not in EVENT_ID_TRAILERS:
            raise ValueError(f"event_id_trailer must be one of {EVENT_ID_TRAILERS}")
        super().__init__(_MAX_CACHED_METHODS)
        self._recorder = recorder
        self._ignored = frozenset(ignore_services)
        self._trailer_always = event_id_trailer == "always"

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # "/package.Service/Method": the service is the part between the slashes.
        service = method.lstrip("/").partition("/")[0]
        if service in self._ignored:
            return handler
        site = _Site(service, method, self._recorder, self._trailer_always)
        return wrapped(
            handler,
            lambda behaviour: _intercept_coroutine(site, behaviour),
            lambda behaviour: _intercept_generator(site, behaviour),
        )


class _Site:
    """What every call of one method shares."""

    __slots__ = ("method", "recorder", "service", "trailer_always")

    def __init__(self, service: str, method: str, recorder: Recorder, trailer_always: bool) -> None:
        self.service = service
        self.method = method
        self.recorder = recorder
        self.trailer_always = trailer_always


def _intercept_coroutine(site: _Site, behaviour: Behaviour) -> Behaviour:
    async def intercepted(request: Any, context: _Context) -> Any:
        call = _Call(site, context)
        token = _current.set(call.rpc)
        try:
            response = await behaviour(request, call)
        except asyncio.CancelledError:
            await call.finish_awaiting(cancelled_code(context))
            raise
        except Exception as exc:
            # grpc.aio logs an exception out of a handler: the note puts the
            # call's event id on that line (offpath.kit.logs reads it).
            exc.add_note(event_id_note(call.rpc.event_id))
            await call.finish_awaiting(failed_code(context))
            raise
        finally:
            _current.reset(token)
        pending = call.finish(call.returned_code())
        if pending is not None:
            await pending
        return response

    return intercepted


def _intercept_generator(site: _Site, behaviour: Behaviour) -> Behaviour:
    async def intercepted(request: Any, context: _Context) -> None:
        call = _Call(site, context)
        token = _current.set(call.rpc)
        responses: AsyncGenerator[Any, None] = behaviour(request, call)
        try:
            # What grpc.aio does with an async generator handler (its write
            # checks for an abort first), done here so that the end of the
            # stream is seen before grpc sends the status.
            async for response in responses:
                await context.write(response)
        except asyncio.CancelledError:
            await call.finish_awaiting(cancelled_code(context))
            raise
        except Exception as exc:
            # grpc.aio logs an exception out of a handler: the note puts the
            # call's event id on that line (offpath.kit.logs reads it).
            exc.add_note(event_id_note(call.rpc.event_id))
            await call.finish_awaiting(failed_code(context))
            raise
        finally:
            _current.reset(token)
            await responses.aclose()
        await call.finish_awaiting(call.returned_code())

    return intercepted


class _Call(_Context):
    """One RPC in flight: its analytics, its clock, and the context its
    handler is given (grpc's own, with ``abort`` and
    ``set_trailing_metadata`` extended as the module's docstring says)."""

    __slots__ = (
        "_code",
        "_context",
        "_pair",
        "_recorded",
        "_site",
        "_started_ns",
        "_t0",
        "_trailer_set",
        "rpc",
    )

    def __init__(self, site: _Site, context: _Context) -> None:
        self._t0 = time.perf_counter_ns()
        self._started_ns = time.time_ns()
        self._site = site
        self._context = context
        self._recorded = False
        # What the handler gave set_code (kept here: asking grpc's context
        # costs more on the path every call takes).
        self._code: grpc.StatusCode | None = None
        event_id = new_id()
        self.rpc = RpcAnalytics(event_id)
        self._pair: tuple[str, str] = (EVENT_ID_METADATA, event_id)
        self._trailer_set = site.trailer_always
        if site.trailer_always:
            # Set now, so every way the call can end (reply, abort,
            # exception) carries the id; an outer interceptor's trailing
            # metadata is kept.
            context.set_trailing_metadata((*context.trailing_metadata(), self._pair))

    # -- recording ------------------------------------------------------------

    def finish(self, code: grpc.StatusCode) -> Awaitable[None] | None:
        """Hand the event to the recorder, once per call; what is returned
        (if anything) must be awaited before the reply goes."""
        if self._recorded:
            return None
        self._recorded = True
        site = self._site
        if not self._trailer_set and code is not grpc.StatusCode.OK:
            # Errors only: set before the status is sent (finish runs before
            # abort sends it, and before an exception or a set code reaches
            # grpc, which sends the context's trailing metadata with it).
            self._trailer_set = True
            context = self._context
            context.set_trailing_metadata((*context.trailing_metadata(), self._pair))
        record = event_record(
            self.rpc,
            self._started_ns,
            site.service,
            site.method,
            time.perf_counter_ns() - self._t0,
            # OK first: StatusCode hashes in Python, an identity test does
            # not. .get: a code grpc does not know (abort given an int, say)
            # must not make analytics raise into the RPC.
            0 if code is _OK else _CODE_NUMBERS.get(code, _UNKNOWN),
        )
        try:
            result = site.recorder.emit(record)
        except Exception:
            _log_failure(record)
            return None
        # Emitter.emit returns a bool: skip the awaitable check on the hot path.
        if result is True or result is False or result is None:
            return None
        if inspect.isawaitable(result):
            return _guarded(result, record)
        return None

    def returned_code(self) -> grpc.StatusCode:
        """The status of a call whose handler returned: OK unless it set a code."""
        code = self._code
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK

    async def finish_awaiting(self, code: grpc.StatusCode) -> None:
        pending = self.finish(code)
        if pending is not None:
            await pending

    # -- the handler's context: changed ------------------------------------

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Any = (),
    ) -> NoReturn:
        # grpc sends the status from inside abort: record first.
        await self.finish_awaiting(code)
        if trailing_metadata:
            # grpc sends these instead of the context's: the id goes with them.
            trailing_metadata = (*trailing_metadata, self._pair)
        # grpc.aio's abort takes a tuple only.
        await self._context.abort(code, details, tuple(trailing_metadata))

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        if self._trailer_set:
            trailing_metadata = (*trailing_metadata, self._pair)
        self._context.set_trailing_metadata(tuple(trailing_metadata))

    # -- the handler's context: passed through -------------------------------

    async def read(self) -> Any:
        return await self._context.read()

    async def write(self, message: Any) -> None:
        await self._context.write(message)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        await self._context.send_initial_metadata(initial_metadata)

    def add_done_callback(self, callback: Any) -> None:
        self._context.add_done_callback(callback)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def time_remaining(self) -> Any:
        return self._context.time_remaining()

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    def code(self) -> Any:
        return self._context.code()

    def details(self) -> str:
        return self._context.details()

    def cancelled(self) -> bool:
        return self._context.cancelled()

    def done(self) -> bool:
        return self._context.done()


async def _guarded(pending: Awaitable[object], record: EventRecord) -> None:
    try:
        await pending
    except Exception:
        _log_failure(record)


def _log_failure(record: EventRecord) -> None:
    # Logged where it happens (a rare failure, not the request path's normal
    # work); a CancelledError is not caught: it is the RPC's own.
    log.exception("analytics_record_failed", event_id=record.event_id, method=record.method)
