"""ClientSettings from OFFPATH_* and the channel it configures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offpath.client.channels import channel_options, service_config
from offpath.client.settings import (
    DEFAULT_INGEST_TARGET,
    DEFAULT_QUERY_TARGET,
    ENV_CA_FILE,
    ENV_CERT_FILE,
    ENV_KEY_FILE,
    ENV_MAX_ATTEMPTS,
    ENV_TIMEOUT_S,
    ENV_TLS,
    ENV_TLS_SERVER_NAME,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ClientSettings,
    SettingsError,
    is_loopback_target,
)


class TestFromEnv:
    def test_defaults_are_plaintext_loopback_with_retries(self) -> None:
        """With nothing set: the local ports, plaintext, 5 s deadline, four attempts."""
        settings = ClientSettings.from_env({})
        assert settings.query_target == DEFAULT_QUERY_TARGET
        assert settings.ingest_target == DEFAULT_INGEST_TARGET
        assert settings.tls is False
        assert settings.timeout_s == 5.0
        assert settings.max_attempts == 4

    def test_reads_every_variable(self) -> None:
        """Targets, deadline, TLS, CA file, token and attempts come from their variables."""
        settings = ClientSettings.from_env(
            {
                "OFFPATH_QUERY_TARGET": "q.example:443",
                "OFFPATH_INGEST_TARGET": "i.example:443",
                ENV_TIMEOUT_S: "2.5",
                ENV_TLS: "ON",
                ENV_CA_FILE: "/etc/ca.pem",
                ENV_TOKEN: "s3cret",
                ENV_MAX_ATTEMPTS: "1",
                "OFFPATH_CLIENT_KEEPALIVE_S": "60",
            }
        )
        assert settings == ClientSettings(
            query_target="q.example:443",
            ingest_target="i.example:443",
            timeout_s=2.5,
            tls=True,
            ca_file="/etc/ca.pem",
            token="s3cret",
            max_attempts=1,
            keepalive_s=60,
        )

    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({ENV_TIMEOUT_S: "0"}, ENV_TIMEOUT_S),
            ({ENV_TIMEOUT_S: "soon"}, ENV_TIMEOUT_S),
            ({ENV_MAX_ATTEMPTS: "6"}, ENV_MAX_ATTEMPTS),
            ({ENV_TLS: "yes"}, ENV_TLS),
            ({ENV_CA_FILE: "/etc/ca.pem"}, ENV_TLS),
            ({ENV_TOKEN: "s3cret", "OFFPATH_INGEST_TARGET": "i.example:443"}, ENV_TLS),
            ({ENV_CERT_FILE: "/etc/c.pem", ENV_KEY_FILE: "/etc/c.key"}, ENV_TLS),
            ({ENV_TLS: "on", ENV_CERT_FILE: "/etc/c.pem"}, ENV_KEY_FILE),
            ({ENV_TLS: "on", ENV_KEY_FILE: "/etc/c.key"}, ENV_CERT_FILE),
            ({ENV_TLS_SERVER_NAME: "query.example"}, ENV_TLS),
            ({ENV_TOKEN: "s3cret", ENV_TOKEN_FILE: "/etc/token"}, ENV_TOKEN_FILE),
            ({ENV_TOKEN_FILE: "/nonexistent/offpath-token"}, ENV_TOKEN_FILE),
        ],
    )
    def test_bad_values_raise_naming_the_variable(self, env: dict[str, str], named: str) -> None:
        """A value out of range, unparsable, a CA file, client certificate or
        server name without TLS, half a client certificate, a token bound off
        this machine without TLS, or an unreadable token file is an error that
        names the variable to fix, never a silent fallback to plaintext."""
        with pytest.raises(SettingsError, match=named):
            ClientSettings.from_env(env)

    def test_reads_the_mutual_tls_and_token_file_variables(self, tmp_path: Path) -> None:
        """Client certificate, key and server name come from their variables; the
        token from the first line of its file that is not a comment."""
        token = tmp_path / "token"
        token.write_text("# read token\n\n  s3cret-from-file  \nsecond\n", "utf-8")
        settings = ClientSettings.from_env(
            {
                ENV_TLS: "on",
                ENV_CERT_FILE: "/etc/c.pem",
                ENV_KEY_FILE: "/etc/c.key",
                ENV_TLS_SERVER_NAME: "offpath-query.offpath.svc",
                ENV_TOKEN_FILE: str(token),
            }
        )
        assert (settings.cert_file, settings.key_file) == ("/etc/c.pem", "/etc/c.key")
        assert settings.tls_server_name == "offpath-query.offpath.svc"
        assert settings.token == "s3cret-from-file"
        assert "s3cret" not in repr(settings)

    def test_token_without_tls_only_to_loopback(self) -> None:
        """A plaintext token is allowed to a loopback AnalyticsIngest (gRPC's local
        credentials send it there only), refused to any other address."""
        assert ClientSettings(token="t", ingest_target="localhost:50052").token == "t"
        assert ClientSettings(token="t", ingest_target="[::1]:50052").token == "t"
        with pytest.raises(SettingsError, match=r"10\.0\.0\.7:50052"):
            ClientSettings(token="t", ingest_target="10.0.0.7:50052")

    @pytest.mark.parametrize(
        ("target", "loopback"),
        [
            ("127.0.0.1:50052", True),
            ("127.1.2.3:1", True),
            ("localhost:50052", True),
            ("[::1]:50052", True),
            ("dns:///localhost:50052", True),
            ("ipv4:127.0.0.1:50052", True),
            ("10.0.0.7:50052", False),
            ("offpath-ingest.offpath.svc:50052", False),
            ("[2001:db8::1]:50052", False),
            ("localhost.example.com:50052", False),
        ],
    )
    def test_loopback_targets(self, target: str, loopback: bool) -> None:
        """Which targets count as this machine."""
        assert is_loopback_target(target) is loopback

    def test_replace_ignores_unset_overrides(self) -> None:
        """replace() changes the fields given and leaves those passed as None."""
        settings = ClientSettings().replace(query_target="h:1", ingest_target=None, timeout_s=None)
        assert settings == ClientSettings(query_target="h:1")


class TestChannel:
    def test_retries_unavailable_only_on_both_services(self) -> None:
        """The service config retries UNAVAILABLE, and nothing else, on every
        method of QueryService and AnalyticsIngest, up to max_attempts."""
        config = json.loads(service_config(ClientSettings(max_attempts=3)))
        (method,) = config["methodConfig"]
        assert method["name"] == [
            {"service": "offpath.v1.QueryService"},
            {"service": "offpath.v1.AnalyticsIngest"},
        ]
        assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert method["retryPolicy"]["maxAttempts"] == 3

    def test_one_attempt_turns_retries_off(self) -> None:
        """max_attempts 1: no retry policy and gRPC's retries disabled."""
        settings = ClientSettings(max_attempts=1)
        assert "retryPolicy" not in service_config(settings)
        assert ("grpc.enable_retries", 0) in channel_options(settings)

    def test_keepalive_pings_only_during_calls(self) -> None:
        """Keepalive at the configured interval, never on an idle connection
        (a server on gRPC's defaults would close it for too many pings)."""
        options = dict(channel_options(ClientSettings(keepalive_s=60)))
        assert options["grpc.keepalive_time_ms"] == 60_000
        assert options["grpc.keepalive_permit_without_calls"] == 0
