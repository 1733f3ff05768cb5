"""Unit tests for environment parsing: offpath.kit.settings helpers, ResourceNames and
EmitterSettings.from_env."""

from __future__ import annotations

import os
import re

import pytest

from offpath.emitter.settings import (
    ENV_DRAIN_TIMEOUT_S,
    ENV_EVENTS_PER_MESSAGE,
    ENV_LINGER_MS,
    ENV_MAX_MESSAGE_BYTES,
    ENV_MAX_QUEUE,
    ENV_PRODUCER_ID,
    ENV_QUEUE_URL,
    ENV_RETRY_DEADLINE_S,
    EmitterSettings,
    default_producer_id,
    sanitize_producer_id,
)
from offpath.kit.aws import ENV_DLQ_NAME, ENV_QUEUE_NAME, ENV_TABLE_NAME, ResourceNames
from offpath.kit.settings import (
    SettingsError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_optional_str,
    env_str,
)

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


class TestEnvBool:
    @pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " true "])
    def test_true(self, raw: str) -> None:
        """The true spellings, in any case, are True."""
        assert env_bool({VAR: raw}, VAR, False) is True

    @pytest.mark.parametrize("raw", ["0", "false", "False", "no", "OFF"])
    def test_false(self, raw: str) -> None:
        """The false spellings, in any case, are False."""
        assert env_bool({VAR: raw}, VAR, True) is False

    @pytest.mark.parametrize("default", [True, False])
    def test_default_when_unset_or_blank(self, default: bool) -> None:
        """Unset or blank gives the default."""
        assert env_bool({}, VAR, default) is default
        assert env_bool({VAR: " "}, VAR, default) is default

    @pytest.mark.parametrize("raw", ["2", "y", "enabled", "truee"])
    def test_bad_value(self, raw: str) -> None:
        """Anything else raises SettingsError naming the variable, never a silent default."""
        with pytest.raises(SettingsError, match=rf"^{VAR}=.* not a boolean"):
            env_bool({VAR: raw}, VAR, True)


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


class TestResourceNames:
    def test_defaults_are_fifo(self) -> None:
        """With nothing set, the queue and DLQ are the default FIFO pair."""
        names = ResourceNames.from_env({})
        assert names == ResourceNames()
        assert names.queue.endswith(".fifo")
        assert names.dlq.endswith(".fifo")

    def test_reads_every_name(self) -> None:
        """Each of the three names comes from its own variable."""
        names = ResourceNames.from_env(
            {ENV_QUEUE_NAME: "q", ENV_DLQ_NAME: "q-dlq", ENV_TABLE_NAME: "t"}
        )
        assert names == ResourceNames(queue="q", dlq="q-dlq", table="t")

    @pytest.mark.parametrize(
        "env",
        [
            {ENV_QUEUE_NAME: "events"},
            {ENV_DLQ_NAME: "events-dlq"},
            {ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "events-dlq.fifo"},
        ],
        ids=["standard-queue-fifo-dlq", "fifo-queue-standard-dlq", "both-set"],
    )
    def test_fifo_mismatch(self, env: dict[str, str]) -> None:
        """A FIFO queue with a standard DLQ (or the reverse) fails, naming both variables."""
        with pytest.raises(SettingsError) as info:
            ResourceNames.from_env(env)
        assert ENV_QUEUE_NAME in str(info.value)
        assert ENV_DLQ_NAME in str(info.value)


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

    def test_fifo_mismatch_propagates(self) -> None:
        """The queue/DLQ FIFO mismatch is caught when the emitter settings are built."""
        with pytest.raises(SettingsError, match=ENV_DLQ_NAME):
            EmitterSettings.from_env({ENV_QUEUE_NAME: "events"})


class TestSanitizeProducerId:
    def test_replaces_unsafe_characters_and_truncates(self) -> None:
        """Spaces and non-ASCII become underscores and the result fits 128 characters."""
        assert sanitize_producer_id("a b\u00e9c") == "a_b_c"
        assert len(sanitize_producer_id("x" * 300)) == 128

    def test_empty_becomes_a_placeholder(self) -> None:
        """An empty id (say, an empty host name) still yields a usable group id."""
        assert sanitize_producer_id("") == "producer"
