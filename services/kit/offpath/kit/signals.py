"""Turning SIGTERM and SIGINT into a stop request, the one way offpath does it.

Inside a running event loop the handler runs on the loop
(``loop.add_signal_handler``), so it may touch asyncio objects; outside one
it runs on the main thread between bytecodes (``signal.signal``), where it
may also raise to interrupt a blocking wait. Either way the previous
disposition is back when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_signals(
    handler: Callable[[signal.Signals], None],
    signals: Iterable[signal.Signals] = STOP_SIGNALS,
) -> Iterator[None]:
    """Call ``handler(sig)`` for each of ``signals`` that arrives inside the block."""
    wanted = tuple(signals)
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        # remove_signal_handler resets to the default, not to what was there
        # (asyncio.run's own SIGINT handler, say): put that back by hand.
        before = {sig: signal.getsignal(sig) for sig in wanted}
        for sig in wanted:
            loop.add_signal_handler(sig, handler, sig)
        try:
            yield
        finally:
            for sig, disposition in before.items():
                loop.remove_signal_handler(sig)
                if disposition is not None:
                    signal.signal(sig, disposition)
        return
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: handler(signal.Signals(signum)))
        for sig in wanted
    }
    try:
        yield
    finally:
        for sig, disposition in previous.items():
            signal.signal(sig, disposition)


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event | threading.Event,
    signals: Iterable[signal.Signals] = STOP_SIGNALS,
) -> Iterator[list[str]]:
    """Set ``stop`` when one of ``signals`` arrives inside the block; yields
    the list of the names received, oldest first (for the shutdown log)."""
    received: list[str] = []

    def handle(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    with on_signals(handle, signals):
        yield received
