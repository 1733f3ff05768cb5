"""Client configuration, read from ``OFFPATH_*`` by the library and the CLI alike.

One frozen :class:`ClientSettings`, built by :meth:`ClientSettings.from_env`:
``OffpathClient()``, ``AsyncOffpathClient()`` and every ``offpath`` command
start from it, and explicit arguments or options override single fields
(:meth:`ClientSettings.replace`). So the CLI and a program using the library
talk to the same place with the same TLS, deadline and retry policy.

A bad value raises :class:`SettingsError` naming the variable, as the
services do, rather than falling back the way a library usually would: the
fallback for a mistyped CA file or target would be plaintext to the default
address, which is worse than an error at construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from offpath.kit import defaults
from offpath.kit.settings import (
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_optional_str,
    env_str,
    environ,
)

ENV_QUERY_TARGET: Final = "OFFPATH_QUERY_TARGET"
ENV_INGEST_TARGET: Final = "OFFPATH_INGEST_TARGET"
ENV_TIMEOUT_S: Final = "OFFPATH_CLIENT_TIMEOUT_S"
ENV_TLS: Final = "OFFPATH_CLIENT_TLS"
ENV_CA_FILE: Final = "OFFPATH_CLIENT_CA_FILE"
ENV_TOKEN: Final = "OFFPATH_CLIENT_TOKEN"
ENV_MAX_ATTEMPTS: Final = "OFFPATH_CLIENT_MAX_ATTEMPTS"
ENV_KEEPALIVE_S: Final = "OFFPATH_CLIENT_KEEPALIVE_S"

DEFAULT_QUERY_TARGET: Final = defaults.QUERY_TARGET
DEFAULT_INGEST_TARGET: Final = defaults.INGEST_TARGET
DEFAULT_TIMEOUT_S: Final = 5.0
MIN_TIMEOUT_S: Final = 0.001
MAX_TIMEOUT_S: Final = 3600.0
# One call and up to three retries; gRPC caps maxAttempts at 5 whatever is asked.
DEFAULT_MAX_ATTEMPTS: Final = 4
MAX_ATTEMPTS: Final = 5
# A server on gRPC's defaults answers pings more frequent than every 5 minutes
# (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS) with GOAWAY
# "too_many_pings", so the default stays at that; 5 minutes also stays under
# the 350 s idle timeout of an AWS Network Load Balancer.
DEFAULT_KEEPALIVE_S: Final = 300.0
MIN_KEEPALIVE_S: Final = 10.0  # gRPC clamps lower client values to 10 s anyway
MAX_KEEPALIVE_S: Final = 7200.0
TLS_MODES: Final = ("off", "on")

__all__ = ["ClientSettings", "SettingsError"]


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the two services are and how to call them.

    ``tls`` off (the default) is plaintext, meant for loopback and a cluster's
    own network; on, the channel verifies the server against ``ca_file`` (PEM
    roots) or, without one, gRPC's bundled roots. ``token`` is sent as
    ``authorization: Bearer <token>`` on every call and needs TLS (gRPC never
    sends call credentials in plaintext). ``max_attempts`` counts the first
    call: 1 turns retries off.
    """

    query_target: str = DEFAULT_QUERY_TARGET
    ingest_target: str = DEFAULT_INGEST_TARGET
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    ca_file: str | None = None
    token: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    keepalive_s: float = DEFAULT_KEEPALIVE_S

    def __post_init__(self) -> None:
        if not MIN_TIMEOUT_S <= self.timeout_s <= MAX_TIMEOUT_S:
            raise SettingsError(
                f"timeout {self.timeout_s} s is outside {MIN_TIMEOUT_S}-{MAX_TIMEOUT_S:g} s"
            )
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise SettingsError(f"max attempts {self.max_attempts} is outside 1-{MAX_ATTEMPTS}")
        if not MIN_KEEPALIVE_S <= self.keepalive_s <= MAX_KEEPALIVE_S:
            raise SettingsError(
                f"keepalive {self.keepalive_s} s is outside "
                f"{MIN_KEEPALIVE_S:g}-{MAX_KEEPALIVE_S:g} s"
            )
        if self.ca_file is not None and not self.tls:
            raise SettingsError(f"{ENV_CA_FILE} is set but TLS is off (set {ENV_TLS}=on)")
        if self.token is not None and not self.tls:
            raise SettingsError(
                f"a bearer token ({ENV_TOKEN}) is only sent over TLS (set {ENV_TLS}=on)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSettings:
        """Settings from ``env`` (default: the process environment)."""
        env = environ() if env is None else env
        return cls(
            query_target=env_str(env, ENV_QUERY_TARGET, DEFAULT_QUERY_TARGET),
            ingest_target=env_str(env, ENV_INGEST_TARGET, DEFAULT_INGEST_TARGET),
            timeout_s=env_float(
                env, ENV_TIMEOUT_S, DEFAULT_TIMEOUT_S, minimum=MIN_TIMEOUT_S, maximum=MAX_TIMEOUT_S
            ),
            tls=env_choice(env, ENV_TLS, "off", TLS_MODES) == "on",
            ca_file=env_optional_str(env, ENV_CA_FILE),
            token=env_optional_str(env, ENV_TOKEN),
            max_attempts=env_int(
                env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=MAX_ATTEMPTS
            ),
            keepalive_s=env_float(
                env,
                ENV_KEEPALIVE_S,
                DEFAULT_KEEPALIVE_S,
                minimum=MIN_KEEPALIVE_S,
                maximum=MAX_KEEPALIVE_S,
            ),
        )

    def replace(self, **changes: object) -> ClientSettings:
        """A copy with the given fields changed; ``None`` values are ignored,
        so unset options leave the environment's value alone."""
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]
