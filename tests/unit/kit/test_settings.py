"""Unit tests for environment parsing: offpath.kit.settings helpers, ServerSettings,
EmitterSettings.from_env, and the services' settings built from them."""

from __future__ import annotations

import os
import re

import pytest

from offpath.emitter.settings import (
    ENV_DRAIN_TIMEOUT_S,
    ENV_EVENT_ID_TRAILER,
    ENV_EVENTS_PER_MESSAGE,
    ENV_LINGER_MS,
    ENV_MAX_MESSAGE_BYTES,
    ENV_MAX_QUEUE,
    ENV_PRODUCER_ID,
    ENV_RETRY_DEADLINE_S,
    EmitterSettings,
    default_producer_id,
    sanitize_producer_id,
)
from offpath.ingest import settings as ingest
from offpath.ingest.settings import IngestSettings
from offpath.kit import defaults
from offpath.kit.settings import (
    ENV_LOG_LEVEL,
    ENV_SHUTDOWN_GRACE_S,
    ServerSettings,
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_optional_str,
    env_str,
)
from offpath.kit.sqs import ENV_DLQ_NAME, ENV_DLQ_URL, ENV_QUEUE_NAME, ENV_QUEUE_URL, QueueNames
from offpath.query import settings as query
from offpath.query.settings import QuerySettings

VAR = "OFFPATH_TEST_VALUE"


class TestEnvStr:
    def test_value_is_stripped(self) -> None:
        """Surrounding whitespace (a common .env mistake) is not part of the value."""
        assert env_str({VAR: "  name \n"}, VAR, "default") == "name"

    @pytest.mark.parametrize("env", [{}, {VAR: ""}, {VAR: "   "}])
    def test_default_when_unset_or_blank(self, env: dict[str, str]) -> None:
        """Unset and blank both mean "use the default" (or None for the optional form)."""
        assert env_str(env, VAR, "default") == "default"
        assert env_optional_str(env, VAR) is None


class TestEnvInt:
    @pytest.mark.parametrize(("raw", "expected"), [("42", 42), (" 7 ", 7), ("-3", -3), ("0", 0)])
    def test_parses(self, raw: str, expected: int) -> None:
        """Decimal integers parse, whitespace around them ignored."""
        assert env_int({VAR: raw}, VAR, 99) == expected

    @pytest.mark.parametrize("env", [{}, {VAR: ""}, {VAR: "  "}])
    def test_default_when_unset_or_blank(self, env: dict[str, str]) -> None:
        """Unset or blank gives the default, even one outside the range checked for values."""
        assert env_int(env, VAR, 99, minimum=1, maximum=10) == 99

    @pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0x10", "12ms"])
    def test_not_an_integer(self, raw: str) -> None:
        """A value that is not a decimal integer raises SettingsError naming variable and value."""
        with pytest.raises(SettingsError, match=rf"^{VAR}=.*{re.escape(raw)}.* not an integer"):
            env_int({VAR: raw}, VAR, 1)

    @pytest.mark.parametrize(
        ("raw", "word"), [("0", "below the minimum 1"), ("11", "above the maximum 10")]
    )
    def test_out_of_range(self, raw: str, word: str) -> None:
        """A value outside [minimum, maximum] raises SettingsError naming the variable and bound."""
        with pytest.raises(SettingsError, match=rf"^{VAR}='{raw}' is {word}"):
            env_int({VAR: raw}, VAR, 5, minimum=1, maximum=10)

    @pytest.mark.parametrize("raw", ["1", "10"])
    def test_bounds_are_inclusive(self, raw: str) -> None:
        """The minimum and maximum themselves are allowed."""
        assert env_int({VAR: raw}, VAR, 5, minimum=1, maximum=10) == int(raw)


class TestEnvFloat:
    @pytest.mark.parametrize(("raw", "expected"), [("1.5", 1.5), ("2", 2.0), (" 1e-3 ", 0.001)])
    def test_parses(self, raw: str, expected: float) -> None:
        """Decimal and exponent notation parse."""
        assert env_float({VAR: raw}, VAR, 9.0) == expected

    @pytest.mark.parametrize("env", [{}, {VAR: ""}])
    def test_default_when_unset_or_blank(self, env: dict[str, str]) -> None:
        """Unset or blank gives the default."""
        assert env_float(env, VAR, 9.5, minimum=0, maximum=1) == 9.5

    @pytest.mark.parametrize("raw", ["fast", "nan", "NaN", "1,5"])
    def test_not_a_number(self, raw: str) -> None:
        """Text and NaN raise SettingsError naming the variable."""
        with pytest.raises(SettingsError, match=rf"^{VAR}=.* not a number"):
            env_float({VAR: raw}, VAR, 1.0)

    @pytest.mark.parametrize("raw", ["-0.5", "3600.5", "inf", "-inf"])
    def test_out_of_range(self, raw: str) -> None:
        """Values outside the range, infinities included, raise SettingsError naming it."""
        with pytest.raises(SettingsError, match=rf"^{VAR}=.* is (below|above)"):
            env_float({VAR: raw}, VAR, 1.0, minimum=0, maximum=3600)


class TestEnvChoice:
    CHOICES = ("debug", "info", "warning")

    def test_case_insensitive_and_lowered(self) -> None:
        """A choice in any case is accepted and returned in its canonical lower case."""
        assert env_choice({VAR: "WARNING"}, VAR, "info", self.CHOICES) == "warning"

    def test_default_when_unset_or_blank(self) -> None:
        """Unset or blank gives the default."""
        assert env_choice({}, VAR, "info", self.CHOICES) == "info"
        assert env_choice({VAR: ""}, VAR, "info", self.CHOICES) == "info"

    def test_bad_value_lists_the_choices(self) -> None:
        """An unknown value raises SettingsError naming the variable and every choice."""
        with pytest.raises(SettingsError, match=rf"^{VAR}='verbose' .*debug, info, warning"):
            env_choice({VAR: "verbose"}, VAR, "info", self.CHOICES)


HOST_VAR = "OFFPATH_TEST_HOST"
PORT_VAR = "OFFPATH_TEST_PORT"
METRICS_PORT_VAR = "OFFPATH_TEST_METRICS_PORT"


def _server(env: dict[str, str]) -> ServerSettings:
    return ServerSettings.from_env(
        env,
        host_var=HOST_VAR,
        port_var=PORT_VAR,
        metrics_port_var=METRICS_PORT_VAR,
        default_host="127.0.0.1",
        default_port=50000,
        default_metrics_port=9000,
    )


class TestServerSettings:
    def test_defaults(self) -> None:
        """With nothing set, the defaults given by the service apply, plus the shared ones."""
        assert _server({}) == ServerSettings(
            host="127.0.0.1", port=50000, metrics_port=9000, grace_s=5.0, log_level="info"
        )

    def test_reads_the_services_own_variables_and_the_shared_ones(self) -> None:
        """Host and ports come from the variables the service names; grace and log level from
        the variables every service shares."""
        settings = _server(
            {
                HOST_VAR: "0.0.0.0",
                PORT_VAR: "6000",
                METRICS_PORT_VAR: "0",
                ENV_SHUTDOWN_GRACE_S: "2.5",
                ENV_LOG_LEVEL: "DEBUG",
            }
        )
        assert settings == ServerSettings(
            host="0.0.0.0", port=6000, metrics_port=0, grace_s=2.5, log_level="debug"
        )

    @pytest.mark.parametrize(
        ("name", "raw"),
        [
            (PORT_VAR, "65536"),
            (PORT_VAR, "-1"),
            (PORT_VAR, "http"),
            (METRICS_PORT_VAR, "70000"),
            (ENV_SHUTDOWN_GRACE_S, "301"),
            (ENV_SHUTDOWN_GRACE_S, "-1"),
            (ENV_LOG_LEVEL, "verbose"),
        ],
    )
    def test_bad_values_name_the_variable(self, name: str, raw: str) -> None:
        """A bad or out-of-range value fails with the variable's name in the message."""
        with pytest.raises(SettingsError, match=rf"^{name}="):
            _server({name: raw})


class TestEmitterSettingsFromEnv:
    def test_defaults(self) -> None:
        """With nothing set, defaults apply and the producer id is this host and process."""
        settings = EmitterSettings.from_env({})
        assert settings.queue_name == "offpath-events.fifo"
        assert settings.queue_url is None
        assert settings.producer_id == default_producer_id()
        assert str(os.getpid()) in settings.producer_id
        assert settings.linger_s == 1.0
        assert settings.max_queue_size == 20_000
        assert settings.events_per_message == 500
        assert settings.max_message_bytes == 256 * 1024
        assert settings.max_export_batch == 5_000
        assert settings.event_id_trailer == "always"

    def test_reads_every_variable(self) -> None:
        """Every variable reaches its field; the linger is given in ms and stored in seconds."""
        settings = EmitterSettings.from_env(
            {
                ENV_QUEUE_NAME: "events",
                ENV_DLQ_NAME: "events-dlq",
                ENV_QUEUE_URL: "http://localhost:4566/000000000000/events",
                ENV_PRODUCER_ID: "pod-7",
                ENV_LINGER_MS: "250",
                ENV_MAX_QUEUE: "100",
                ENV_EVENTS_PER_MESSAGE: "20",
                ENV_MAX_MESSAGE_BYTES: "65536",
                ENV_RETRY_DEADLINE_S: "2.5",
                ENV_DRAIN_TIMEOUT_S: "0",
                ENV_EVENT_ID_TRAILER: "Errors",
            }
        )
        assert settings == EmitterSettings(
            queue_name="events",
            queue_url="http://localhost:4566/000000000000/events",
            producer_id="pod-7",
            linger_s=0.25,
            max_queue_size=100,
            events_per_message=20,
            max_message_bytes=65536,
            retry_deadline_s=2.5,
            drain_timeout_s=0.0,
            event_id_trailer="errors",
        )
        assert settings.max_export_batch == 200

    @pytest.mark.parametrize(
        ("name", "raw"),
        [
            (ENV_LINGER_MS, "0"),
            (ENV_LINGER_MS, "1.5"),
            (ENV_MAX_QUEUE, "0"),
            (ENV_EVENTS_PER_MESSAGE, "10001"),
            (ENV_MAX_MESSAGE_BYTES, "1024"),
            (ENV_MAX_MESSAGE_BYTES, str(1024 * 1024 + 1)),
            (ENV_RETRY_DEADLINE_S, "-1"),
            (ENV_DRAIN_TIMEOUT_S, "soon"),
            (ENV_EVENT_ID_TRAILER, "never"),
        ],
    )
    def test_bad_values_name_the_variable(self, name: str, raw: str) -> None:
        """A bad or out-of-range value fails start-up with the variable's name in the message."""
        with pytest.raises(SettingsError, match=rf"^{name}="):
            EmitterSettings.from_env({name: raw})

    @pytest.mark.parametrize("producer", ["pod 7", "pod\u00e9", "x" * 129])
    def test_producer_id_must_be_a_group_id(self, producer: str) -> None:
        """A producer id that is not a valid FIFO MessageGroupId is refused, not rewritten."""
        with pytest.raises(SettingsError, match=ENV_PRODUCER_ID):
            EmitterSettings.from_env({ENV_PRODUCER_ID: producer})

    @pytest.mark.parametrize(
        "env",
        [
            {ENV_QUEUE_NAME: "events"},
            {ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "events-dlq.fifo"},
            {ENV_DLQ_NAME: "not-even-fifo"},
        ],
        ids=["queue-only", "mismatched-dlq", "dlq-only"],
    )
    def test_the_dlq_name_is_not_the_producers_business(self, env: dict[str, str]) -> None:
        """A producer reads the queue's name only: no DLQ setting can stop it from starting."""
        settings = EmitterSettings.from_env(env)
        assert settings.queue_name == env.get(ENV_QUEUE_NAME, "offpath-events.fifo")


class TestSanitizeProducerId:
    def test_replaces_unsafe_characters_and_truncates(self) -> None:
        """Spaces and non-ASCII become underscores and the result fits 128 characters."""
        assert sanitize_producer_id("a b\u00e9c") == "a_b_c"
        assert len(sanitize_producer_id("x" * 300)) == 128

    def test_empty_becomes_a_placeholder(self) -> None:
        """An empty id (say, an empty host name) still yields a usable group id."""
        assert sanitize_producer_id("") == "producer"


class TestQuerySettings:
    def test_defaults(self) -> None:
        """With nothing set, QueryService listens where its clients look for it."""
        settings = QuerySettings.from_env({})
        assert settings.server == ServerSettings(
            host=defaults.HOST, port=defaults.QUERY_PORT, metrics_port=defaults.QUERY_METRICS_PORT
        )
        assert settings.log_level == settings.server.log_level == "info"
        assert settings.analytics == "background"
        assert settings.catalog_path is None
        assert settings.emitter == EmitterSettings.from_env({})

    def test_reads_its_own_server_variables_only(self) -> None:
        """Query's host and ports come from OFFPATH_QUERY_*; AnalyticsIngest's are ignored."""
        settings = QuerySettings.from_env(
            {
                query.ENV_HOST: "0.0.0.0",
                query.ENV_PORT: "7001",
                query.ENV_METRICS_PORT: "7002",
                ingest.ENV_PORT: "1",
                ENV_SHUTDOWN_GRACE_S: "1.5",
                ENV_LOG_LEVEL: "warning",
            }
        )
        assert settings.server == ServerSettings(
            host="0.0.0.0", port=7001, metrics_port=7002, grace_s=1.5, log_level="warning"
        )
        assert settings.log_level == "warning"

    def test_queue_name_alone_starts_the_service(self) -> None:
        """Regression: OFFPATH_SQS_QUEUE_NAME=events alone (a standard queue, so a DLQ name
        that would not match the default) is enough to start QueryService."""
        settings = QuerySettings.from_env({ENV_QUEUE_NAME: "events"})
        assert settings.emitter.queue_name == "events"

    def test_a_mismatched_dlq_does_not_stop_the_producer(self) -> None:
        """QueryService never uses the DLQ, so an explicit FIFO/standard mismatch there does
        not stop it (it stops AnalyticsIngest)."""
        env = {ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "events-dlq.fifo"}
        assert QuerySettings.from_env(env).emitter.queue_name == "events"

    def test_bad_analytics_mode_names_the_variable(self) -> None:
        """An unknown analytics mode fails with the variable's name and the choices."""
        with pytest.raises(SettingsError, match=rf"^{query.ENV_ANALYTICS}=.*background"):
            QuerySettings.from_env({query.ENV_ANALYTICS: "sometimes"})


class TestIngestSettings:
    def test_defaults(self) -> None:
        """With nothing set, AnalyticsIngest listens on its own defaults and reads the default
        FIFO queue, DLQ and table."""
        settings = IngestSettings.from_env({})
        assert settings.server == ServerSettings(
            host=defaults.HOST,
            port=defaults.INGEST_PORT,
            metrics_port=defaults.INGEST_METRICS_PORT,
        )
        assert settings.log_level == "info"
        assert settings.queues == QueueNames()
        assert settings.table == ingest.DEFAULT_TABLE_NAME
        assert (settings.queue_url, settings.dlq_url) == (None, None)
        assert (settings.wait_s, settings.retention_days, settings.time_shards) == (20, 30, 4)
        assert settings.pollers == 1

    def test_reads_every_variable(self) -> None:
        """Each variable reaches its field; server fields sit under ``.server``."""
        settings = IngestSettings.from_env(
            {
                ingest.ENV_HOST: "0.0.0.0",
                ingest.ENV_PORT: "7101",
                ingest.ENV_METRICS_PORT: "7102",
                query.ENV_PORT: "1",
                ENV_SHUTDOWN_GRACE_S: "0",
                ENV_LOG_LEVEL: "error",
                ingest.ENV_WAIT_S: "0",
                ingest.ENV_POLLERS: "8",
                ingest.ENV_RETENTION_DAYS: "7",
                ingest.ENV_TIME_SHARDS: "8",
                ingest.ENV_TABLE_NAME: "events-table",
                ENV_QUEUE_NAME: "q",
                ENV_DLQ_NAME: "q-dead",
                ENV_QUEUE_URL: "http://localhost:4566/000000000000/q",
                ENV_DLQ_URL: "http://localhost:4566/000000000000/q-dead",
            }
        )
        assert settings == IngestSettings(
            server=ServerSettings(
                host="0.0.0.0", port=7101, metrics_port=7102, grace_s=0.0, log_level="error"
            ),
            wait_s=0,
            retention_days=7,
            time_shards=8,
            queues=QueueNames(queue="q", dlq="q-dead"),
            table="events-table",
            queue_url="http://localhost:4566/000000000000/q",
            dlq_url="http://localhost:4566/000000000000/q-dead",
            # The rollup table's name follows the events table's.
            rollup_table="events-table-rollups",
            pollers=8,
        )

    def test_queue_name_alone_derives_the_dlq(self) -> None:
        """Regression: OFFPATH_SQS_QUEUE_NAME=events alone starts AnalyticsIngest too, with
        the DLQ named events-dlq."""
        settings = IngestSettings.from_env({ENV_QUEUE_NAME: "events"})
        assert settings.queues == QueueNames(queue="events", dlq="events-dlq")

    @pytest.mark.parametrize(
        "env",
        [
            {ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "events-dlq.fifo"},
            {ENV_QUEUE_NAME: "events.fifo", ENV_DLQ_NAME: "events-dlq"},
        ],
        ids=["standard-queue-fifo-dlq", "fifo-queue-standard-dlq"],
    )
    def test_explicit_fifo_mismatch_fails(self, env: dict[str, str]) -> None:
        """The consumer, which does use the DLQ, refuses a FIFO/standard mismatch set
        explicitly, naming both variables."""
        with pytest.raises(SettingsError, match=ENV_DLQ_NAME) as info:
            IngestSettings.from_env(env)
        assert ENV_QUEUE_NAME in str(info.value)

    @pytest.mark.parametrize(
        ("name", "raw"),
        [
            (ingest.ENV_WAIT_S, "21"),
            (ingest.ENV_POLLERS, "-1"),
            (ingest.ENV_POLLERS, "33"),
            (ingest.ENV_RETENTION_DAYS, "0"),
            (ingest.ENV_TIME_SHARDS, "65"),
        ],
    )
    def test_bad_values_name_the_variable(self, name: str, raw: str) -> None:
        """A bad or out-of-range value fails start-up with the variable's name in the message."""
        with pytest.raises(SettingsError, match=rf"^{name}="):
            IngestSettings.from_env({name: raw})
