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
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
ENV_TOKEN_FILE: Final = "OFFPATH_CLIENT_TOKEN_FILE"
ENV_CERT_FILE: Final = "OFFPATH_CLIENT_CERT_FILE"
ENV_KEY_FILE: Final = "OFFPATH_CLIENT_KEY_FILE"
ENV_TLS_SERVER_NAME: Final = "OFFPATH_CLIENT_TLS_SERVER_NAME"
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

__all__ = ["ClientSettings", "SettingsError", "is_loopback_target", "read_token_file"]


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target (``host:port``, ``[::1]:port``, ``localhost:port``,
    with or without a ``dns:///`` or ``ipv4:`` scheme) is this machine."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    if target.startswith("["):
        host = target[1:].partition("]")[0]
    else:
        host = target.rpartition(":")[0] if target.count(":") == 1 else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token_file(path: str, variable: str = ENV_TOKEN_FILE) -> str:
    """The token in a file: its first line that is neither blank nor a ``#``
    comment (the format AnalyticsIngest's token file has)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"{variable}={path} cannot be read: {reason}") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise SettingsError(f"{variable}={path} holds no token")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the two services are and how to call them.

    ``tls`` off (the default) is plaintext, meant for loopback and a cluster's
    own network; on, the channel verifies the server against ``ca_file`` (PEM
    roots) or, without one, gRPC's bundled roots, and checks its certificate
    against ``tls_server_name`` when set (the target's host otherwise: set
    it when calling through a tunnel or an IP address the certificate does
    not name). ``cert_file`` and ``key_file`` (together) are the client's own
    certificate, for a server that asks for one (mutual TLS).

    ``token`` is AnalyticsIngest's read token, sent as ``authorization:
    Bearer <token>`` on AnalyticsIngest calls only (QueryService never sees
    it); gRPC sends it over TLS, or in plaintext to a loopback target only.
    ``max_attempts`` counts the first call: 1 turns retries off.
    """

    query_target: str = DEFAULT_QUERY_TARGET
    ingest_target: str = DEFAULT_INGEST_TARGET
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    ca_file: str | None = None
    # A secret: kept out of repr, so printing the settings shows none.
    token: str | None = field(default=None, repr=False)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None

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
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingsError(
                f"a client certificate needs both {ENV_CERT_FILE} and {ENV_KEY_FILE}"
            )
        for name, value in (
            (ENV_CERT_FILE, self.cert_file),
            (ENV_TLS_SERVER_NAME, self.tls_server_name),
        ):
            if value is not None and not self.tls:
                raise SettingsError(f"{name} is set but TLS is off (set {ENV_TLS}=on)")
        if self.token is not None and not self.tls and not is_loopback_target(self.ingest_target):
            raise SettingsError(
                f"a bearer token ({ENV_TOKEN}) is only sent over TLS (set {ENV_TLS}=on) "
                f"or to a loopback target, not to {self.ingest_target}"
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
            token=_token_from_env(env),
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
            cert_file=env_optional_str(env, ENV_CERT_FILE),
            key_file=env_optional_str(env, ENV_KEY_FILE),
            tls_server_name=env_optional_str(env, ENV_TLS_SERVER_NAME),
        )

    def replace(self, **changes: object) -> ClientSettings:
        """A copy with the given fields changed; ``None`` values are ignored,
        so unset options leave the environment's value alone."""
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]


def _token_from_env(env: Mapping[str, str]) -> str | None:
    token = env_optional_str(env, ENV_TOKEN)
    path = env_optional_str(env, ENV_TOKEN_FILE)
    if token is not None and path is not None:
        raise SettingsError(f"set {ENV_TOKEN} or {ENV_TOKEN_FILE}, not both")
    return token if path is None else read_token_file(path)
