"""QueryService configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offpath.emitter import EmitterSettings
from offpath.kit import defaults
from offpath.kit.settings import ServerSettings, env_choice, env_optional_str

ENV_HOST = "OFFPATH_QUERY_HOST"
ENV_PORT = "OFFPATH_QUERY_PORT"
ENV_METRICS_PORT = "OFFPATH_QUERY_METRICS_PORT"
ENV_ANALYTICS = "OFFPATH_ANALYTICS"
ENV_CATALOG = "OFFPATH_SKILLS_CATALOG"

_DEFAULT_ANALYTICS = "background"

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
        )
