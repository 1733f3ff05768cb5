"""OffpathClient and AsyncOffpathClient over a real gRPC port: the same calls,
the retry policy, TLS and the bearer token."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offpath.client import AsyncOffpathClient, ClientSettings, OffpathClient

from .conftest import STORED_ID, FakeServer, Script, serve


class TestSyncClient:
    def test_calls_both_services_and_pages_events(self, fake: FakeServer) -> None:
        """query, get_event, summary answer, and list_events follows the page token."""
        with OffpathClient(fake.target, fake.target) as client:
            assert client.query("k8s", top_k=2).event_id == STORED_ID
            assert client.get_event(STORED_ID).batch_id == "b-1"
            assert client.summary().event_count == 3
            ids = [e.event_id for e in client.list_events()]
        assert ids == [STORED_ID, "e-2", "e-3"]
        assert fake.script.calls["ListEvents"] == 2

    def test_unavailable_is_retried_within_one_call(self, fake: FakeServer) -> None:
        """A Query refused twice with UNAVAILABLE succeeds on the third attempt,
        inside one call of the client."""
        fake.script.unavailable_first["Query"] = 2
        with OffpathClient(fake.target, fake.target) as client:
            assert client.query("k8s").answer == "yes: k8s"
        assert fake.script.calls["Query"] == 3

    def test_one_attempt_means_no_retry(self, fake: FakeServer) -> None:
        """With max_attempts 1 the first UNAVAILABLE reaches the caller."""
        fake.script.unavailable_first["Query"] = 1
        settings = ClientSettings(query_target=fake.target, max_attempts=1)
        with OffpathClient(settings=settings) as client, pytest.raises(grpc.RpcError) as caught:
            client.query("k8s")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert fake.script.calls["Query"] == 1

    def test_not_found_is_not_retried(self, fake: FakeServer) -> None:
        """NOT_FOUND is an answer, not a failure to reach: one attempt only."""
        with OffpathClient(fake.target, fake.target) as client, pytest.raises(grpc.RpcError):
            client.get_event("missing")
        assert fake.script.calls["GetEvent"] == 1

    def test_arguments_override_the_environment(
        self, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OffpathClient() reads OFFPATH_*; explicit arguments win over it."""
        monkeypatch.setenv("OFFPATH_QUERY_TARGET", fake.target)
        monkeypatch.setenv("OFFPATH_CLIENT_TIMEOUT_S", "7")
        client = OffpathClient(ingest_target="elsewhere:1", timeout=2)
        assert (client.query_target, client.ingest_target, client.timeout) == (
            fake.target,
            "elsewhere:1",
            2,
        )
        with client:
            assert client.query("k8s").event_id == STORED_ID


class TestAsyncClient:
    async def test_calls_both_services_and_pages_events(self, fake: FakeServer) -> None:
        """The asyncio client answers the same calls, list_events as an async iterator."""
        async with AsyncOffpathClient(fake.target, fake.target) as client:
            assert (await client.query("k8s")).event_id == STORED_ID
            assert (await client.wait_for_event(STORED_ID, timeout=1)).batch_id == "b-1"
            assert (await client.summary()).error_count == 1
            ids = [e.event_id async for e in client.list_events(limit=2)]
        assert ids == [STORED_ID, "e-2"]

    async def test_unavailable_is_retried(self, fake: FakeServer) -> None:
        """The asyncio channel carries the same retry policy as the sync one."""
        fake.script.unavailable_first["GetSummary"] = 2
        async with AsyncOffpathClient(fake.target, fake.target) as client:
            assert (await client.summary()).event_count == 3
        assert fake.script.calls["GetSummary"] == 3

    async def test_errors_carry_the_server_status(self, fake: FakeServer) -> None:
        """A NOT_FOUND from the server surfaces as an RpcError with that code."""
        async with AsyncOffpathClient(fake.target, fake.target) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get_event("missing")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- TLS --------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[bytes, bytes, Path]:
    """A key and certificate for 127.0.0.1 (its own CA), and the PEM's path."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offpath-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = directory / "ca.pem"
    path.write_bytes(cert_pem)
    return key_pem, cert_pem, path


@pytest.fixture
def tls_fake(tmp_path: Path) -> Iterator[tuple[FakeServer, Path]]:
    """The scripted services behind TLS, and the CA file that verifies them."""
    key_pem, cert_pem, ca_file = _self_signed(tmp_path)
    script = Script()
    for target in serve(script, grpc.ssl_server_credentials([(key_pem, cert_pem)])):
        yield FakeServer(target, script), ca_file


class TestTls:
    def test_ca_file_and_token_reach_a_tls_server(self, tls_fake: tuple[FakeServer, Path]) -> None:
        """With TLS on, the CA file verifies the server, and the read token arrives
        as `authorization: Bearer <token>` on AnalyticsIngest calls, never on
        QueryService ones."""
        fake, ca_file = tls_fake
        settings = ClientSettings(
            query_target=fake.target,
            ingest_target=fake.target,
            tls=True,
            ca_file=str(ca_file),
            token="s3cret",
        )
        with OffpathClient(settings=settings) as client:
            assert client.query("k8s").event_id == STORED_ID
            assert fake.script.authorization == []
            assert client.summary().event_count == 3
        assert fake.script.authorization == ["Bearer s3cret"]

    async def test_async_client_speaks_tls_too(self, tls_fake: tuple[FakeServer, Path]) -> None:
        """The asyncio client opens the same verified channel."""
        fake, ca_file = tls_fake
        settings = ClientSettings(query_target=fake.target, tls=True, ca_file=str(ca_file))
        async with AsyncOffpathClient(settings=settings) as client:
            assert (await client.query("k8s")).event_id == STORED_ID

    def test_an_unverified_server_is_refused(self, tls_fake: tuple[FakeServer, Path]) -> None:
        """Without the CA file the self-signed server fails verification: the call
        fails UNAVAILABLE and the handler never runs."""
        fake, _ = tls_fake
        settings = ClientSettings(query_target=fake.target, tls=True, timeout_s=2, max_attempts=1)
        with OffpathClient(settings=settings) as client, pytest.raises(grpc.RpcError) as caught:
            client.query("k8s")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert fake.script.calls["Query"] == 0

    def test_plaintext_client_cannot_talk_to_a_tls_server(
        self, tls_fake: tuple[FakeServer, Path]
    ) -> None:
        """The default (plaintext) does not silently reach a TLS port."""
        fake, _ = tls_fake
        settings = ClientSettings(query_target=fake.target, timeout_s=2, max_attempts=1)
        with OffpathClient(settings=settings) as client, pytest.raises(grpc.RpcError):
            client.query("k8s")
        assert fake.script.calls["Query"] == 0
