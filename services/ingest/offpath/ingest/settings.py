"""AnalyticsIngest configuration, built once at start-up from ``OFFPATH_*``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from offpath.ingest.store import rollup_table_for
from offpath.kit import defaults
from offpath.kit.settings import (
    ServerSettings,
    SettingsError,
    env_int,
    env_optional_str,
    env_str,
)
from offpath.kit.sqs import ENV_DLQ_URL, ENV_QUEUE_URL, QueueNames

ENV_HOST = "OFFPATH_INGEST_HOST"
ENV_PORT = "OFFPATH_INGEST_PORT"
ENV_METRICS_PORT = "OFFPATH_INGEST_METRICS_PORT"
ENV_WAIT_S = "OFFPATH_INGEST_WAIT_S"
ENV_POLLERS = "OFFPATH_INGEST_POLLERS"
ENV_RETENTION_DAYS = "OFFPATH_RETENTION_DAYS"
ENV_TIME_SHARDS = "OFFPATH_DDB_TIME_SHARDS"
ENV_TABLE_NAME = "OFFPATH_DDB_TABLE"
ENV_ROLLUP_TABLE_NAME = "OFFPATH_DDB_ROLLUP_TABLE"
ENV_ROLLUP_BUCKET_MINUTES = "OFFPATH_ROLLUP_BUCKET_MINUTES"
ENV_READ_TOKENS = "OFFPATH_INGEST_READ_TOKENS"
ENV_READ_TOKENS_FILE = "OFFPATH_INGEST_READ_TOKENS_FILE"

DEFAULT_TABLE_NAME = "offpath-events"
# Long polls return at once when messages arrive; an idle one costs a
# ReceiveMessage request per wait: at 20 s (SQS's longest) one poller makes
# 129,600 requests in a 30-day month, half of what 10 s makes. Shutdown does not
# wait for a poll in flight (what it brings is handed back).
_DEFAULT_WAIT_S = 20
# Each poller long-polls and writes on its own thread; more of them drain a
# backlog faster when DynamoDB, not the one CPU, is the limit. 0 runs the
# read API alone: something else consumes the queue (the Lambda function,
# offpath.ingest.lambda_handler, deployed with IngestMode=lambda).
_DEFAULT_POLLERS = 1
READ_ONLY_POLLERS = 0
_MAX_POLLERS = 32
_DEFAULT_RETENTION_DAYS = 30
# Changing it re-partitions the time index for new writes only: keep it
# fixed for a table's life.
_DEFAULT_TIME_SHARDS = 4


# Rollup buckets: an hour by default; any whole number of minutes that
# divides a day. Keep it fixed for a table's life (summaries add up whatever
# buckets they find, but volume per bucket would mix widths).
_DEFAULT_ROLLUP_BUCKET_MINUTES = 60


def table_name_from_env(env: Mapping[str, str]) -> str:
    """The events table's name."""
    return env_str(env, ENV_TABLE_NAME, DEFAULT_TABLE_NAME)


def rollup_table_name_from_env(env: Mapping[str, str]) -> str:
    """The rollup table's name: default, the events table's + ``-rollups``."""
    return env_str(env, ENV_ROLLUP_TABLE_NAME, rollup_table_for(table_name_from_env(env)))


def _bucket_minutes(env: Mapping[str, str]) -> int:
    minutes = env_int(
        env, ENV_ROLLUP_BUCKET_MINUTES, _DEFAULT_ROLLUP_BUCKET_MINUTES, minimum=1, maximum=1440
    )
    if 1440 % minutes:
        raise SettingsError(
            f"{ENV_ROLLUP_BUCKET_MINUTES}={minutes} does not divide a day (1440 minutes)"
        )
    return minutes


# A read token is a random secret, not a password someone types: at least
# 16 characters (e.g. `openssl rand -hex 32`), of those a header value can
# carry without quoting (no spaces, no commas: they separate tokens).
MIN_READ_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def _checked_token(token: str, where: str) -> str:
    # The message names where the token came from, never the token.
    if not _TOKEN.fullmatch(token):
        raise SettingsError(
            f"{where}: a read token holds printable ASCII only, without spaces or commas"
        )
    if len(token) < MIN_READ_TOKEN_LENGTH:
        raise SettingsError(
            f"{where}: a read token is at least {MIN_READ_TOKEN_LENGTH} characters "
            "(generate one: openssl rand -hex 32)"
        )
    return token


def read_tokens_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """The tokens AnalyticsIngest's read API accepts: those of
    ``OFFPATH_INGEST_READ_TOKENS`` (comma-separated) and those of the file
    ``OFFPATH_INGEST_READ_TOKENS_FILE`` (one a line; blank lines and ``#``
    comments skipped). Empty: the read API is open."""
    tokens: list[str] = []
    listed = env_optional_str(env, ENV_READ_TOKENS)
    if listed is not None:
        for index, item in enumerate(listed.split(","), 1):
            if item.strip():
                tokens.append(_checked_token(item.strip(), f"{ENV_READ_TOKENS} (item {index})"))
    path = env_optional_str(env, ENV_READ_TOKENS_FILE)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SettingsError(f"{ENV_READ_TOKENS_FILE}={path} cannot be read: {reason}") from None
        found = 0
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(_checked_token(line, f"{ENV_READ_TOKENS_FILE}={path} line {number}"))
                found += 1
        if not found:
            # An empty Secret must not open the API it was meant to close.
            raise SettingsError(f"{ENV_READ_TOKENS_FILE}={path} holds no token")
    return tuple(dict.fromkeys(tokens))


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
    rollup_table: str = ""
    rollup_bucket_minutes: int = _DEFAULT_ROLLUP_BUCKET_MINUTES
    pollers: int = _DEFAULT_POLLERS
    # Secrets: kept out of repr, so that printing the settings shows none.
    read_tokens: tuple[str, ...] = field(default=(), repr=False)

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
            rollup_table=rollup_table_name_from_env(env),
            rollup_bucket_minutes=_bucket_minutes(env),
            pollers=env_int(
                env, ENV_POLLERS, _DEFAULT_POLLERS, minimum=READ_ONLY_POLLERS, maximum=_MAX_POLLERS
            ),
            read_tokens=read_tokens_from_env(env),
        )
