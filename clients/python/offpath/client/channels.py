"""Channels for both client flavours, from one :class:`ClientSettings`.

The retry policy travels in the channel's service config, so gRPC itself
retries (with backoff and jitter, within the call's deadline) and neither
client carries a loop of its own. Only UNAVAILABLE is retried: the call did
not reach a server, or the server refused it before doing anything (shutting
down, overloaded). DEADLINE_EXCEEDED is not: the work may have run.

Every method of both services is retried, Query included. AnalyticsIngest's
reads have no side effect at all. Query computes an answer from a read-only
catalog; its one side effect is its analytics event, and each attempt the
server actually handled is recorded as its own event with its own id and the
status it ended with, so a retry adds a true record of what happened, never
a second copy of one event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import grpc

from offpath.client.settings import ClientSettings, SettingsError

QUERY_SERVICE: Final = "offpath.v1.QueryService"
INGEST_SERVICE: Final = "offpath.v1.AnalyticsIngest"
RETRYABLE: Final = ("UNAVAILABLE",)
_INITIAL_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 2.0
_BACKOFF_MULTIPLIER = 2
# How long a keepalive ping may go unanswered before the connection is
# considered dead and its calls fail (UNAVAILABLE, so they are retried).
_KEEPALIVE_TIMEOUT_MS = 20_000


def service_config(settings: ClientSettings) -> str:
    """The channel's service config (JSON): the retry policy per service."""
    config: dict[str, object] = {
        "methodConfig": [
            {
                "name": [{"service": QUERY_SERVICE}, {"service": INGEST_SERVICE}],
                **(
                    {
                        "retryPolicy": {
                            "maxAttempts": settings.max_attempts,
                            "initialBackoff": f"{_INITIAL_BACKOFF_S}s",
                            "maxBackoff": f"{_MAX_BACKOFF_S}s",
                            "backoffMultiplier": _BACKOFF_MULTIPLIER,
                            "retryableStatusCodes": list(RETRYABLE),
                        }
                    }
                    if settings.max_attempts > 1
                    else {}
                ),
            }
        ]
    }
    return json.dumps(config)


def channel_options(settings: ClientSettings) -> list[tuple[str, str | int]]:
    """Channel arguments: service config (retries) and keepalive.

    Pings are sent only while calls are in flight
    (``keepalive_permit_without_calls`` 0): a server on gRPC's defaults
    treats pings on an idle connection as abuse and closes it.
    """
    return [
        ("grpc.service_config", service_config(settings)),
        ("grpc.enable_retries", 1 if settings.max_attempts > 1 else 0),
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def credentials(settings: ClientSettings) -> grpc.ChannelCredentials | None:
    """TLS (and the bearer token) when configured; None means plaintext."""
    if not settings.tls:
        return None
    roots: bytes | None = None
    if settings.ca_file is not None:
        try:
            roots = Path(settings.ca_file).read_bytes()
        except OSError as exc:
            raise SettingsError(f"cannot read the CA file {settings.ca_file}: {exc}") from None
    channel_credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if settings.token is None:
        return channel_credentials
    return grpc.composite_channel_credentials(
        channel_credentials, grpc.access_token_call_credentials(settings.token)
    )


def open_channel(target: str, settings: ClientSettings) -> grpc.Channel:
    """A synchronous channel to ``target``."""
    creds = credentials(settings)
    options = channel_options(settings)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def open_aio_channel(target: str, settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (call from a running event loop)."""
    creds = credentials(settings)
    options = channel_options(settings)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)
