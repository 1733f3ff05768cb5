"""A recorder for tests of the analytics interceptor and the servicers
behind it: keeps every :class:`EventRecord` it is handed, on the event loop,
in order (it satisfies :class:`offpath.emitter.Recorder`, as the emitter
does)."""

from __future__ import annotations

from collections.abc import Callable

from offpath.emitter.record import EventRecord


class ListRecorder:
    """Keeps what ``emit`` is given in ``records``.

    ``on_emit`` runs inside ``emit`` (a test can look at the RPC's state at
    that moment); ``error``, when set, is raised by ``emit`` instead.
    """

    def __init__(self, *, on_emit: Callable[[EventRecord], None] | None = None) -> None:
        self.records: list[EventRecord] = []
        self.on_emit = on_emit
        self.error: Exception | None = None

    def emit(self, record: EventRecord) -> bool:
        if self.error is not None:
            raise self.error
        if self.on_emit is not None:
            self.on_emit(record)
        self.records.append(record)
        return True

    def by_method(self, method: str) -> list[EventRecord]:
        """The records of one full method name (``/package.Service/Method``)."""
        return [record for record in self.records if record.method == method]
