"""AnalyticsIngest configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offpath.kit import defaults
from offpath.kit.settings import ServerSettings, env_int, env_optional_str, env_str
from offpath.kit.sqs import ENV_DLQ_URL, ENV_QUEUE_URL, QueueNames

ENV_HOST = "OFFPATH_INGEST_HOST"
ENV_PORT = "OFFPATH_INGEST_PORT"
ENV_METRICS_PORT = "OFFPATH_INGEST_METRICS_PORT"
ENV_WAIT_S = "OFFPATH_INGEST_WAIT_S"
ENV_POLLERS = "OFFPATH_INGEST_POLLERS"
ENV_RETENTION_DAYS = "OFFPATH_RETENTION_DAYS"
ENV_TIME_SHARDS = "OFFPATH_DDB_TIME_SHARDS"
ENV_TABLE_NAME = "OFFPATH_DDB_TABLE"

DEFAULT_TABLE_NAME = "offpath-events"
# Long polls are cheap and return at once when messages arrive; 10 s keeps
# shutdown (which waits for the poll in flight) short.
_DEFAULT_WAIT_S = 20
_DEFAULT_POLLERS = 1
_MAX_POLLERS = 32
_DEFAULT_RETENTION_DAYS = 30
# Changing it re-partitions the time index for new writes only: keep it
# fixed for a table's life.
_DEFAULT_TIME_SHARDS = 4


def table_name_from_env(env: Mapping[str, str]) -> str:
    """The events table's name."""
    return env_str(env, ENV_TABLE_NAME, DEFAULT_TABLE_NAME)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    server: ServerSettings
    wait_s: int
    retention_days: int
    time_shards: int
    queues: QueueNames
    table: str
    queue_url: str | None
    dlq_url: str | None
    pollers: int = _DEFAULT_POLLERS

    @property
    def log_level(self) -> str:
        return self.server.log_level

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestSettings:
        return cls(
            server=ServerSettings.from_env(
                env,
                host_var=ENV_HOST,
                port_var=ENV_PORT,
                metrics_port_var=ENV_METRICS_PORT,
                default_host=defaults.HOST,
                default_port=defaults.INGEST_PORT,
                default_metrics_port=defaults.INGEST_METRICS_PORT,
            ),
            wait_s=env_int(env, ENV_WAIT_S, _DEFAULT_WAIT_S, minimum=0, maximum=20),
            retention_days=env_int(
                env, ENV_RETENTION_DAYS, _DEFAULT_RETENTION_DAYS, minimum=1, maximum=3650
            ),
            time_shards=env_int(env, ENV_TIME_SHARDS, _DEFAULT_TIME_SHARDS, minimum=1, maximum=64),
            queues=QueueNames.from_env(env),
            table=table_name_from_env(env),
            queue_url=env_optional_str(env, ENV_QUEUE_URL),
            dlq_url=env_optional_str(env, ENV_DLQ_URL),
            pollers=env_int(env, ENV_POLLERS, _DEFAULT_POLLERS, minimum=1, maximum=_MAX_POLLERS),
        )
