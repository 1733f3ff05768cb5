"""Reading ``OFFPATH_*`` settings from the environment.

Services build one frozen settings object at start-up from these helpers and
fail fast: a bad value raises :class:`SettingsError` naming the variable, the
value and what is allowed, and the service exits with that message instead of
falling back to a default the operator did not ask for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from offpath.kit.tls import TlsSettings

ENV_SHUTDOWN_GRACE_S: Final = "OFFPATH_SHUTDOWN_GRACE_S"
ENV_LOG_LEVEL: Final = "OFFPATH_LOG_LEVEL"
ENV_LOOP_LAG_SAMPLE_MS: Final = "OFFPATH_LOOP_LAG_SAMPLE_MS"

_DEFAULT_SHUTDOWN_GRACE_S = 5.0
_DEFAULT_LOG_LEVEL = "info"
# Ten cheap timer wake-ups a second; 0 turns the sampling off.
_DEFAULT_LOOP_LAG_SAMPLE_MS = 100
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with."""


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """The variable's value, or ``default`` when unset or blank."""
    value = _raw(env, name)
    return default if value is None else value


def env_optional_str(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when unset or blank."""
    return _raw(env, name)


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer within [minimum, maximum]; ``default`` when unset."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not an integer") from None
    _check_range(name, value, number, minimum, maximum)
    return number


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A number within [minimum, maximum]; ``default`` when unset."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number") from None
    if number != number:  # NaN compares unequal to itself
        raise SettingsError(f"{name}={value!r} is not a number")
    _check_range(name, value, number, minimum, maximum)
    return number


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive); ``default`` when unset."""
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered not in choices:
        raise SettingsError(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return lowered


def _check_range(
    name: str,
    raw: str,
    number: float,
    minimum: float | None,
    maximum: float | None,
) -> None:
    if minimum is not None and number < minimum:
        raise SettingsError(f"{name}={raw!r} is below the minimum {minimum}")
    if maximum is not None and number > maximum:
        raise SettingsError(f"{name}={raw!r} is above the maximum {maximum}")


def environ() -> Mapping[str, str]:
    """The process environment, as a read-only mapping."""
    return os.environ


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every offpath gRPC service is configured with: where it listens
    (gRPC and Prometheus), how long in-flight RPCs get at shutdown, how much
    it logs, how often it samples its event loop's lag, and whether its gRPC
    port speaks TLS (``OFFPATH_TLS_*``, :class:`~offpath.kit.tls.TlsSettings`;
    None: plaintext). Each service names its own host and port variables."""

    host: str
    port: int
    metrics_port: int
    grace_s: float = _DEFAULT_SHUTDOWN_GRACE_S
    log_level: str = _DEFAULT_LOG_LEVEL
    loop_lag_sample_ms: int = _DEFAULT_LOOP_LAG_SAMPLE_MS
    tls: TlsSettings | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        host_var: str,
        port_var: str,
        metrics_port_var: str,
        default_host: str,
        default_port: int,
        default_metrics_port: int,
    ) -> ServerSettings:
        # Here, not at the top: offpath.kit.tls builds on this module's helpers.
        from offpath.kit.tls import TlsSettings

        return cls(
            host=env_str(env, host_var, default_host),
            port=env_int(env, port_var, default_port, minimum=0, maximum=65535),
            metrics_port=env_int(
                env, metrics_port_var, default_metrics_port, minimum=0, maximum=65535
            ),
            grace_s=env_float(
                env, ENV_SHUTDOWN_GRACE_S, _DEFAULT_SHUTDOWN_GRACE_S, minimum=0, maximum=300
            ),
            log_level=env_choice(env, ENV_LOG_LEVEL, _DEFAULT_LOG_LEVEL, LOG_LEVELS),
            loop_lag_sample_ms=env_int(
                env,
                ENV_LOOP_LAG_SAMPLE_MS,
                _DEFAULT_LOOP_LAG_SAMPLE_MS,
                minimum=0,
                maximum=60_000,
            ),
            tls=TlsSettings.from_env(env),
        )
