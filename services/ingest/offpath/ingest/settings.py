"""AnalyticsIngest configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offpath.kit.aws import ResourceNames
from offpath.kit.logs import log_levels
from offpath.kit.settings import env_choice, env_float, env_int, env_optional_str, env_str

ENV_HOST = "OFFPATH_INGEST_HOST"
ENV_PORT = "OFFPATH_INGEST_PORT"
ENV_METRICS_PORT = "OFFPATH_INGEST_METRICS_PORT"
ENV_WAIT_S = "OFFPATH_INGEST_WAIT_S"
ENV_RETENTION_DAYS = "OFFPATH_RETENTION_DAYS"
ENV_TIME_SHARDS = "OFFPATH_DDB_TIME_SHARDS"
ENV_QUEUE_URL = "OFFPATH_SQS_QUEUE_URL"
ENV_DLQ_URL = "OFFPATH_SQS_DLQ_URL"
ENV_GRACE_S = "OFFPATH_SHUTDOWN_GRACE_S"
ENV_LOG_LEVEL = "OFFPATH_LOG_LEVEL"

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 50052
_DEFAULT_METRICS_PORT = 9465
# Long polls are cheap and return at once when messages arrive; 10 s keeps
# shutdown (which waits for the poll in flight) short.
_DEFAULT_WAIT_S = 10
_DEFAULT_RETENTION_DAYS = 30
# Changing it re-partitions the time index for new writes only: keep it
# fixed for a table's life.
_DEFAULT_TIME_SHARDS = 4
_DEFAULT_GRACE_S = 5.0
_DEFAULT_LOG_LEVEL = "info"


@dataclass(frozen=True, slots=True)
class IngestSettings:
    host: str
    port: int
    metrics_port: int
    wait_s: int
    retention_days: int
    time_shards: int
    names: ResourceNames
    queue_url: str | None
    dlq_url: str | None
    grace_s: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestSettings:
        return cls(
            host=env_str(env, ENV_HOST, _DEFAULT_HOST),
            port=env_int(env, ENV_PORT, _DEFAULT_PORT, minimum=0, maximum=65535),
            metrics_port=env_int(
                env, ENV_METRICS_PORT, _DEFAULT_METRICS_PORT, minimum=0, maximum=65535
            ),
            wait_s=env_int(env, ENV_WAIT_S, _DEFAULT_WAIT_S, minimum=0, maximum=20),
            retention_days=env_int(
                env, ENV_RETENTION_DAYS, _DEFAULT_RETENTION_DAYS, minimum=1, maximum=3650
            ),
            time_shards=env_int(env, ENV_TIME_SHARDS, _DEFAULT_TIME_SHARDS, minimum=1, maximum=64),
            names=ResourceNames.from_env(env),
            queue_url=env_optional_str(env, ENV_QUEUE_URL),
            dlq_url=env_optional_str(env, ENV_DLQ_URL),
            grace_s=env_float(env, ENV_GRACE_S, _DEFAULT_GRACE_S, minimum=0, maximum=300),
            log_level=env_choice(env, ENV_LOG_LEVEL, _DEFAULT_LOG_LEVEL, log_levels()),
        )
