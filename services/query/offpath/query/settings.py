"""QueryService configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offpath.emitter import EmitterSettings
from offpath.kit.logs import log_levels
from offpath.kit.settings import env_choice, env_float, env_int, env_optional_str, env_str

ENV_HOST = "OFFPATH_QUERY_HOST"
ENV_PORT = "OFFPATH_QUERY_PORT"
ENV_METRICS_PORT = "OFFPATH_QUERY_METRICS_PORT"
ENV_ANALYTICS = "OFFPATH_ANALYTICS"
ENV_CATALOG = "OFFPATH_SKILLS_CATALOG"
ENV_GRACE_S = "OFFPATH_SHUTDOWN_GRACE_S"
ENV_LOG_LEVEL = "OFFPATH_LOG_LEVEL"

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 50051
_DEFAULT_METRICS_PORT = 9464
_DEFAULT_ANALYTICS = "background"
_DEFAULT_GRACE_S = 5.0
_DEFAULT_LOG_LEVEL = "info"

# background: emit() and return (the product). off: no analytics at all (the
# benchmark's baseline). blocking: send to SQS before replying (the
# benchmark's contrast: what the original design paid per query).
ANALYTICS_MODES = ("background", "off", "blocking")


@dataclass(frozen=True, slots=True)
class QuerySettings:
    host: str
    port: int
    metrics_port: int
    analytics: str
    catalog_path: str | None
    grace_s: float
    log_level: str
    emitter: EmitterSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QuerySettings:
        return cls(
            host=env_str(env, ENV_HOST, _DEFAULT_HOST),
            port=env_int(env, ENV_PORT, _DEFAULT_PORT, minimum=0, maximum=65535),
            metrics_port=env_int(
                env, ENV_METRICS_PORT, _DEFAULT_METRICS_PORT, minimum=0, maximum=65535
            ),
            analytics=env_choice(env, ENV_ANALYTICS, _DEFAULT_ANALYTICS, ANALYTICS_MODES),
            catalog_path=env_optional_str(env, ENV_CATALOG),
            grace_s=env_float(env, ENV_GRACE_S, _DEFAULT_GRACE_S, minimum=0, maximum=300),
            log_level=env_choice(env, ENV_LOG_LEVEL, _DEFAULT_LOG_LEVEL, log_levels()),
            emitter=EmitterSettings.from_env(env),
        )
