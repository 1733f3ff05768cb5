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

Credentials: TLS when the settings say so (the CA to verify the server with,
the client's own certificate for mutual TLS); the read token only on
channels opened with ``token=True`` (the clients' AnalyticsIngest channel),
so QueryService never receives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import grpc

from offpath.client.settings import (
    ENV_CA_FILE,
    ENV_CERT_FILE,
    ENV_KEY_FILE,
    ClientSettings,
    SettingsError,
)

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
    """Channel arguments: service config (retries), keepalive, and the name
    the server's certificate is checked against when one is set.

    Pings are sent only while calls are in flight
    (``keepalive_permit_without_calls`` 0): a server on gRPC's defaults
    treats pings on an idle connection as abuse and closes it.
    """
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config(settings)),
        ("grpc.enable_retries", 1 if settings.max_attempts > 1 else 0),
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if settings.tls and settings.tls_server_name is not None:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return options


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable}={path} cannot be read: {exc.strerror or exc}") from None


def credentials(settings: ClientSettings, *, token: bool = False) -> grpc.ChannelCredentials | None:
    """The channel's credentials; None means plaintext. With ``token``, the
    settings' bearer token rides on every call: over TLS, or, on a plaintext
    channel, to a loopback target (gRPC's local credentials, which check
    that the peer is this machine)."""
    bearer = settings.token if token else None
    if not settings.tls:
        if bearer is None:
            return None
        return grpc.composite_channel_credentials(
            grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
            grpc.access_token_call_credentials(bearer),
        )
    roots = None if settings.ca_file is None else _read(ENV_CA_FILE, settings.ca_file)
    key = chain = None
    if settings.cert_file is not None and settings.key_file is not None:
        chain = _read(ENV_CERT_FILE, settings.cert_file)
        key = _read(ENV_KEY_FILE, settings.key_file)
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )
    if bearer is None:
        return channel_credentials
    return grpc.composite_channel_credentials(
        channel_credentials, grpc.access_token_call_credentials(bearer)
    )


def open_channel(target: str, settings: ClientSettings, *, token: bool = False) -> grpc.Channel:
    """A synchronous channel to ``target``; ``token``: send the read token."""
    creds = credentials(settings, token=token)
    options = channel_options(settings)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def open_aio_channel(
    target: str, settings: ClientSettings, *, token: bool = False
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (call from a running event loop);
    ``token``: send the read token."""
    creds = credentials(settings, token=token)
    options = channel_options(settings)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)
