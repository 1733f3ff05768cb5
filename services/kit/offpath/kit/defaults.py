"""Defaults shared by the services, their clients and the local stack.

Declared once here so that a service's default port and the address a
client or ``make run`` uses for it cannot drift apart. Nothing here reads the
environment: each component's settings module does that, with these values
as its defaults.
"""

from __future__ import annotations

from typing import Final

HOST: Final = "127.0.0.1"
QUERY_PORT: Final = 50051
QUERY_METRICS_PORT: Final = 9464
INGEST_PORT: Final = 50052
INGEST_METRICS_PORT: Final = 9465

QUERY_TARGET: Final = f"{HOST}:{QUERY_PORT}"
INGEST_TARGET: Final = f"{HOST}:{INGEST_PORT}"
