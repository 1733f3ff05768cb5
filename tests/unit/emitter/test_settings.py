"""Unit tests for offpath.emitter.settings.EmitterSettings' query text settings: the modes
from the environment, the hash key (required for hash, from the environment or a file,
checked, and never shown: not in describe(), repr, to_json or the emitter's log lines) and
the JSON round trip to the sender process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from offpath.emitter.emitter import Emitter
from offpath.emitter.redact import QueryTextPolicy
from offpath.emitter.settings import (
    ENV_QUERY_HASH_KEY,
    ENV_QUERY_HASH_KEY_FILE,
    ENV_QUERY_TEXT,
    EmitterSettings,
)
from offpath.kit.settings import SettingsError

from .test_sender import RecordingSink

KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BASE = {"OFFPATH_SQS_QUEUE_NAME": "events.fifo", "OFFPATH_PRODUCER_ID": "p-1"}


def _env(**values: str) -> dict[str, str]:
    return {**BASE, **values}


class TestModes:
    def test_redact_is_the_default_and_is_described(self) -> None:
        """With nothing set, query texts are redacted, and the start-up log says so."""
        settings = EmitterSettings.from_env(_env())
        assert settings.query_text == "redact"
        assert settings.query_hash_key is None
        assert settings.describe()["query_text"] == "redact"
        assert settings.query_text_policy()("jane@example.com") == "[email]"
        assert EmitterSettings().query_text == "redact"

    @pytest.mark.parametrize(
        ("mode", "expected"),
        [("redact", "[email] asks"), ("keep", "jane@example.com asks"), ("drop", "")],
    )
    def test_each_mode_without_a_key(self, mode: str, expected: str) -> None:
        """redact, keep and drop are read (in any case) and applied by the settings' policy."""
        settings = EmitterSettings.from_env(_env(**{ENV_QUERY_TEXT: mode.upper()}))
        assert settings.query_text == mode
        assert settings.query_text_policy()("jane@example.com asks") == expected

    def test_unknown_mode_is_refused_naming_the_variable(self) -> None:
        """A mode that does not exist stops start-up with a message naming the variable."""
        with pytest.raises(SettingsError, match=ENV_QUERY_TEXT):
            EmitterSettings.from_env(_env(**{ENV_QUERY_TEXT: "scramble"}))
        with pytest.raises(SettingsError, match="not one of"):
            EmitterSettings(query_text="scramble")  # type: ignore[arg-type]


class TestHashKey:
    def test_hash_with_a_key_from_the_environment(self) -> None:
        """hash reads its key from OFFPATH_EMIT_QUERY_HASH_KEY and hashes with it."""
        settings = EmitterSettings.from_env(
            _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY: f"  {KEY}\n"})
        )
        assert settings.query_hash_key == KEY
        expected = QueryTextPolicy("hash", KEY.encode())("kubernetes")
        assert settings.query_text_policy()("kubernetes") == expected

    def test_hash_with_a_key_file(self, tmp_path: Path) -> None:
        """hash reads its key from the file OFFPATH_EMIT_QUERY_HASH_KEY_FILE names (a
        mounted secret; the trailing newline is not part of the key)."""
        key_file = tmp_path / "query-hash-key"
        key_file.write_text(KEY + "\n", encoding="utf-8")
        settings = EmitterSettings.from_env(
            _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY_FILE: str(key_file)})
        )
        assert settings.query_hash_key == KEY
        assert settings.query_hash_key_file == str(key_file)

    def test_hash_without_a_key_is_refused(self) -> None:
        """hash without a key stops start-up, saying which variables give one."""
        with pytest.raises(SettingsError) as caught:
            EmitterSettings.from_env(_env(**{ENV_QUERY_TEXT: "hash"}))
        assert ENV_QUERY_HASH_KEY in str(caught.value)
        assert ENV_QUERY_HASH_KEY_FILE in str(caught.value)
        with pytest.raises(SettingsError, match="needs a key"):
            EmitterSettings(query_text="hash")

    def test_short_key_is_refused_without_echoing_it(self) -> None:
        """A key under 16 characters is refused, and the message does not repeat it."""
        with pytest.raises(SettingsError, match="shorter than 16") as caught:
            EmitterSettings.from_env(
                _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY: "hunter2-secret"})
            )
        assert "hunter2" not in str(caught.value)

    def test_unreadable_or_empty_key_file_is_refused(self, tmp_path: Path) -> None:
        """A key file that is missing or empty stops start-up, naming the file."""
        missing = tmp_path / "nope"
        with pytest.raises(SettingsError, match="cannot be read"):
            EmitterSettings.from_env(
                _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY_FILE: str(missing)})
            )
        empty = tmp_path / "empty"
        empty.write_text("\n", encoding="utf-8")
        with pytest.raises(SettingsError, match="is empty"):
            EmitterSettings.from_env(
                _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY_FILE: str(empty)})
            )

    def test_key_given_twice_or_without_hash_is_refused(self, tmp_path: Path) -> None:
        """Both a key and a key file, or a key while the mode is not hash (the operator
        meant to hash, most likely), stop start-up instead of guessing."""
        key_file = tmp_path / "k"
        key_file.write_text(KEY, encoding="utf-8")
        with pytest.raises(SettingsError, match="both"):
            EmitterSettings.from_env(
                _env(
                    **{
                        ENV_QUERY_TEXT: "hash",
                        ENV_QUERY_HASH_KEY: KEY,
                        ENV_QUERY_HASH_KEY_FILE: str(key_file),
                    }
                )
            )
        with pytest.raises(SettingsError, match="for hash only"):
            EmitterSettings.from_env(_env(**{ENV_QUERY_HASH_KEY: KEY}))
        with pytest.raises(SettingsError, match="for hash only"):
            EmitterSettings.from_env(
                _env(**{ENV_QUERY_TEXT: "keep", ENV_QUERY_HASH_KEY_FILE: str(key_file)})
            )


class TestSecrecyAndTransport:
    def _hashing(self) -> EmitterSettings:
        return EmitterSettings.from_env(_env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY: KEY}))

    def test_key_is_in_no_description_repr_or_json(self) -> None:
        """describe() (the start-up log line), repr and to_json (the sender process's
        command line) never hold the key."""
        settings = self._hashing()
        assert KEY not in json.dumps(settings.describe())
        assert KEY not in repr(settings)
        assert KEY not in settings.to_json()
        assert "query_hash_key" not in json.loads(settings.to_json())

    def test_json_round_trip_reads_the_key_again_from_the_environment(self) -> None:
        """The sender process's settings equal the serving process's: the key is read
        again from the environment it inherits, and refused when it is not there."""
        settings = self._hashing()
        again = EmitterSettings.from_json(settings.to_json(), env={ENV_QUERY_HASH_KEY: KEY})
        assert again == settings
        with pytest.raises(SettingsError, match="needs a key"):
            EmitterSettings.from_json(settings.to_json(), env={})

    def test_json_round_trip_reads_the_key_file_again(self, tmp_path: Path) -> None:
        """With a key file, the sender process reads the same file."""
        key_file = tmp_path / "k"
        key_file.write_text(KEY, encoding="utf-8")
        settings = EmitterSettings.from_env(
            _env(**{ENV_QUERY_TEXT: "hash", ENV_QUERY_HASH_KEY_FILE: str(key_file)})
        )
        assert EmitterSettings.from_json(settings.to_json(), env={}) == settings

    @pytest.mark.parametrize("mode", ["redact", "keep", "drop"])
    def test_json_round_trip_of_the_other_modes(self, mode: str) -> None:
        """Without hash, to_json and from_json give the same settings back."""
        settings = dataclasses.replace(EmitterSettings(), query_text=mode)  # type: ignore[arg-type]
        assert EmitterSettings.from_json(settings.to_json(), env={}) == settings

    async def test_emitter_logs_never_show_the_key(self) -> None:
        """An emitter started and stopped with a hash key logs its mode, never the key."""
        emitter = Emitter(RecordingSink(), self._hashing())
        with capture_logs() as logs:
            emitter.start()
            await emitter.shutdown(timeout=2.0)
        started = [line for line in logs if line["event"] == "emitter_started"]
        assert started
        assert started[0]["query_text"] == "hash"
        assert KEY not in repr(logs)
