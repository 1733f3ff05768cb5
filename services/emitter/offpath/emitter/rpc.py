"""What a handler sees of analytics: the current RPC's event id, and a place to
put its own fields.

:class:`~offpath.emitter.interceptor.AnalyticsInterceptor` makes one
:class:`RpcAnalytics` per RPC and publishes it in a context variable for the
length of the call; :func:`current_rpc` reads it. The interceptor builds the
event from it when the call ends, so a handler never builds an event itself::

    rpc = current_rpc()
    rpc.set(query=text, model="template-v1")
    ...
    return Reply(..., event_id=rpc.event_id)

Outside an intercepted RPC (analytics off, a test calling the servicer
directly, a background task) :func:`current_rpc` returns a shared object that
ignores what it is given and whose ``event_id`` is empty, so the same handler
code runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType

from offpath.emitter.record import EventRecord

_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class RpcAnalytics:
    """One RPC's analytics fields, set by its handler.

    Fields are read-only attributes and change only through :meth:`set`, so
    the no-op object returned outside an RPC can refuse them all in one place.
    """

    __slots__ = ("_attributes", "_event_id", "_matched_skills", "_model", "_query", "_tokens")

    def __init__(self, event_id: str) -> None:
        self._event_id = event_id
        self._query = ""
        self._matched_skills: tuple[tuple[str, float], ...] = ()
        self._model = ""
        self._tokens = 0
        # Made on first use: most RPCs never add one.
        self._attributes: dict[str, str] | None = None

    @property
    def event_id(self) -> str:
        """This RPC's event id (a UUIDv7), also in the reply's trailing
        metadata; empty outside an intercepted RPC."""
        return self._event_id

    @property
    def query(self) -> str:
        return self._query

    @property
    def matched_skills(self) -> tuple[tuple[str, float], ...]:
        return self._matched_skills

    @property
    def model(self) -> str:
        return self._model

    @property
    def token_count(self) -> int:
        return self._tokens

    @property
    def attributes(self) -> Mapping[str, str]:
        return self._attributes if self._attributes is not None else _NO_ATTRIBUTES

    def set(
        self,
        *,
        query: str | None = None,
        matched_skills: Iterable[tuple[str, float]] | None = None,
        model: str | None = None,
        token_count: int | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Record fields of this RPC's event. Only the arguments given change;
        ``attributes`` are merged into those set before. Cheap: plain
        assignments, nothing is built or sent here."""
        if query is not None:
            self._query = query
        if matched_skills is not None:
            self._matched_skills = tuple(matched_skills)
        if model is not None:
            self._model = model
        if token_count is not None:
            self._tokens = token_count
        if attributes:
            if self._attributes is None:
                self._attributes = dict(attributes)
            else:
                self._attributes.update(attributes)


class _NoRpc(RpcAnalytics):
    """Outside an intercepted RPC: an empty event id, and every field ignored
    (one object is shared by every caller, so it must never hold anything)."""

    __slots__ = ()

    def set(
        self,
        *,
        query: str | None = None,
        matched_skills: Iterable[tuple[str, float]] | None = None,
        model: str | None = None,
        token_count: int | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        return None


NO_RPC: RpcAnalytics = _NoRpc("")


def event_record(
    rpc: RpcAnalytics,
    occurred_at_ns: int,
    service: str,
    method: str,
    processing_ns: int,
    status_code: int,
) -> EventRecord:
    """The event an RPC's analytics make once the call has ended (the
    interceptor's side of this module; handlers never call it)."""
    # Positional: on the request path, keyword arguments cost three times as
    # much to pass as the whole record is to build.
    return EventRecord(
        rpc._event_id,
        occurred_at_ns,
        service,
        method,
        rpc._query,
        rpc._matched_skills,
        processing_ns,
        rpc._model,
        rpc._tokens,
        status_code,
        # A copy: a handler that kept ``rpc`` (say, in a task it started) must
        # not change an event that is already buffered.
        dict(rpc._attributes) if rpc._attributes else None,
    )


# Set by the interceptor for the length of one RPC. grpc.aio runs each RPC in
# its own task, and a task runs in a copy of the context it was created in,
# so concurrent RPCs never see each other's value.
_current: ContextVar[RpcAnalytics] = ContextVar("offpath_rpc_analytics")


def current_rpc() -> RpcAnalytics:
    """The analytics of the RPC being handled (or :data:`NO_RPC`, the no-op,
    outside an intercepted RPC)."""
    return _current.get(NO_RPC)
