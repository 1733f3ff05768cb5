"""Adoption in a few lines: an emitter and the interceptor that feeds it.

A thin facade over an emitter (:func:`~offpath.emitter.base.open_emitter`
picks the one the settings name) and
:class:`~offpath.emitter.interceptor.AnalyticsInterceptor`, holding what a
service's ``main`` would otherwise wire by hand: settings from the
environment, the interceptor, and start and shutdown in the right places.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from offpath.emitter.base import EventEmitter, open_emitter
from offpath.emitter.emitter import EmitterStats
from offpath.emitter.interceptor import DEFAULT_IGNORED_SERVICES, AnalyticsInterceptor
from offpath.emitter.settings import EmitterSettings, EventIdTrailer

# Start-up waits at most this long for the SQS client to warm up; analytics
# must never hold up serving for longer.
DEFAULT_WARM_UP_TIMEOUT_S = 3.0


class Analytics:
    """An emitter plus the interceptor recording every RPC into it.

    ``start()`` once the event loop runs (before the server takes traffic);
    ``shutdown()`` after ``server.stop(grace)``, so in-flight RPCs can still
    record, then what is buffered is drained.
    """

    def __init__(
        self,
        emitter: EventEmitter,
        *,
        ignore_services: Iterable[str] = DEFAULT_IGNORED_SERVICES,
        warm_up_timeout_s: float = DEFAULT_WARM_UP_TIMEOUT_S,
        event_id_trailer: EventIdTrailer = "always",
    ) -> None:
        self.emitter = emitter
        self.interceptor = AnalyticsInterceptor(
            emitter, ignore_services=ignore_services, event_id_trailer=event_id_trailer
        )
        self._warm_up_timeout_s = warm_up_timeout_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Analytics:
        """Configured by the ``OFFPATH_EMIT_*``/``OFFPATH_SQS_*`` variables
        (the sender, process or thread, included), sending to SQS through the
        standard AWS chain (region, credentials, endpoint). A bad value raises
        ``SettingsError`` naming the variable."""
        settings = EmitterSettings.from_env(os.environ if env is None else env)
        return cls(open_emitter(settings), event_id_trailer=settings.event_id_trailer)

    async def start(self) -> bool:
        """Start the emitter and warm its SQS client up, best effort: False
        (and a logged warning) if the warm-up failed or timed out; serving
        goes ahead either way."""
        self.emitter.start()
        return await self.emitter.prepare(self._warm_up_timeout_s)

    async def shutdown(self, timeout: float | None = None) -> EmitterStats:
        """Drain what is buffered within ``timeout`` (default: the configured
        drain timeout); what is left is counted as dropped. Safe to call twice."""
        return await self.emitter.shutdown(timeout)
