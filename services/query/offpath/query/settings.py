"""QueryService configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offpath.emitter import EmitterSettings
from offpath.kit import defaults
from offpath.kit.settings import ServerSettings, env_choice, env_int, env_optional_str

ENV_HOST = "OFFPATH_QUERY_HOST"
ENV_PORT = "OFFPATH_QUERY_PORT"
ENV_METRICS_PORT = "OFFPATH_QUERY_METRICS_PORT"
ENV_ANALYTICS = "OFFPATH_ANALYTICS"
ENV_CATALOG = "OFFPATH_SKILLS_CATALOG"
ENV_WORKERS = "OFFPATH_QUERY_WORKERS"

_DEFAULT_ANALYTICS = "background"
# One serving process unless asked: a worker per core the pod may use is the
# operator's choice (it multiplies memory, senders and SQS producers).
_DEFAULT_WORKERS = 1
MAX_WORKERS = 64

# background: emit() and return (the product). off: no analytics at all (the
# benchmark's baseline). blocking: send to SQS before replying (the
# benchmark's contrast: what the original design paid per query).
ANALYTICS_MODES = ("background", "off", "blocking")


@dataclass(frozen=True, slots=True)
class QuerySettings:
    server: ServerSettings
    analytics: str
    catalog_path: str | None
    emitter: EmitterSettings
    workers: int = _DEFAULT_WORKERS

    @property
    def log_level(self) -> str:
        return self.server.log_level

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QuerySettings:
        return cls(
            server=ServerSettings.from_env(
                env,
                host_var=ENV_HOST,
                port_var=ENV_PORT,
                metrics_port_var=ENV_METRICS_PORT,
                default_host=defaults.HOST,
                default_port=defaults.QUERY_PORT,
                default_metrics_port=defaults.QUERY_METRICS_PORT,
            ),
            analytics=env_choice(env, ENV_ANALYTICS, _DEFAULT_ANALYTICS, ANALYTICS_MODES),
            catalog_path=env_optional_str(env, ENV_CATALOG),
            emitter=EmitterSettings.from_env(env),
            workers=env_int(env, ENV_WORKERS, _DEFAULT_WORKERS, minimum=1, maximum=MAX_WORKERS),
        )
