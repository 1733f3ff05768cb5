"""What every emitter offers, and the one that settings ask for.

Two implementations share this surface: :class:`~offpath.emitter.process.ProcessEmitter`
(the default: each event leaves the serving process's memory at ``emit``,
for a sender process to batch and send) and
:class:`~offpath.emitter.emitter.Emitter` (a sender thread in the serving
process; ``OFFPATH_EMIT_SENDER=thread``).
"""

from __future__ import annotations

from typing import Protocol

from offpath.emitter.emitter import Emitter, EmitterStats
from offpath.emitter.process import ProcessEmitter
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sqs import SqsSink


class EventEmitter(Protocol):
    """Fire-and-forget delivery of :class:`EventRecord`: ``emit`` on the
    request path (O(1), never blocks or raises), the rest around serving."""

    def emit(self, record: EventRecord) -> bool: ...

    def start(self) -> None: ...

    async def prepare(self, timeout: float) -> bool: ...

    async def force_flush(self) -> None: ...

    async def shutdown(self, timeout: float | None = None) -> EmitterStats: ...

    @property
    def stats(self) -> EmitterStats: ...

    @property
    def pending(self) -> int: ...


def open_emitter(
    settings: EmitterSettings, *, service: str = "emitter", log_level: str = "info"
) -> EventEmitter:
    """The emitter ``settings.sender`` names, sending to the SQS queue the
    settings name (region, credentials and endpoint from the standard AWS
    chain). Call ``start()`` on the running loop before serving."""
    if settings.sender == "thread":
        return Emitter(SqsSink(settings), settings)
    return ProcessEmitter(settings, service=service, log_level=log_level)
