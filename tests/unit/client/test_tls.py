"""The client library and the `offpath` command line over TLS and mutual TLS
(certificates from a test CA made here), the server name override, and the
read token: sent to AnalyticsIngest only, over TLS or to loopback in plaintext."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from click.testing import CliRunner, Result

from offpath.client import AsyncOffpathClient, OffpathClient
from offpath.client.cli import offpath
from offpath.client.cli.app import EXIT_UNAVAILABLE
from offpath.client.settings import ENV_CERT_FILE, ClientSettings, SettingsError
from offpath.kit.tls import TlsSettings

from .conftest import STORED_ID, FakeServer, Script, serve

TOKEN = "read-token-0123456789abcdef"


@dataclass
class Pki:
    folder: Path
    ca: trustme.CA

    def write(self, name: str, blob: trustme.Blob) -> str:
        path = self.folder / name
        blob.write_to_path(str(path))
        return str(path)

    @property
    def ca_file(self) -> str:
        return self.write("ca.pem", self.ca.cert_pem)

    def issue(self, name: str, *identities: str) -> tuple[str, str]:
        """A certificate and key for ``identities``, as (cert file, key file)."""
        cert = self.ca.issue_cert(*identities)
        return (
            self.write(f"{name}.pem", cert.cert_chain_pems[0]),
            self.write(f"{name}.key", cert.private_key_pem),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, trustme.CA())


def _server(pki: Pki, *identities: str, mutual: bool) -> Iterator[FakeServer]:
    cert_file, key_file = pki.issue("server", *identities)
    tls = TlsSettings(cert_file, key_file, pki.ca_file if mutual else None)
    tls.check()
    script = Script()
    for target in serve(script, tls.server_credentials()):
        yield FakeServer(target, script)


@pytest.fixture
def mtls_fake(pki: Pki) -> Iterator[FakeServer]:
    """The scripted services behind mutual TLS, for 127.0.0.1."""
    yield from _server(pki, "127.0.0.1", mutual=True)


@pytest.fixture
def named_fake(pki: Pki) -> Iterator[FakeServer]:
    """The scripted services behind TLS with a certificate naming only a DNS name."""
    yield from _server(pki, "offpath-query.offpath.svc", mutual=False)


def _settings(fake: FakeServer, **fields: object) -> ClientSettings:
    return ClientSettings(
        query_target=fake.target,
        ingest_target=fake.target,
        timeout_s=3,
        max_attempts=1,
        **fields,  # type: ignore[arg-type]
    )


class TestMutualTls:
    def test_client_certificate_is_presented(self, pki: Pki, mtls_fake: FakeServer) -> None:
        """With cert and key files the client passes the server's client check,
        on both services, and the token reaches AnalyticsIngest only."""
        cert_file, key_file = pki.issue("client", "client@example.test")
        settings = _settings(
            mtls_fake,
            tls=True,
            ca_file=pki.ca_file,
            cert_file=cert_file,
            key_file=key_file,
            token=TOKEN,
        )
        with OffpathClient(settings=settings) as client:
            assert client.query("k8s").event_id == STORED_ID
            assert client.summary().event_count == 3
        assert mtls_fake.script.authorization == [f"Bearer {TOKEN}"]

    async def test_async_client_presents_it_too(self, pki: Pki, mtls_fake: FakeServer) -> None:
        """The asyncio client opens the same mutual TLS channel."""
        cert_file, key_file = pki.issue("client", "client@example.test")
        settings = _settings(
            mtls_fake, tls=True, ca_file=pki.ca_file, cert_file=cert_file, key_file=key_file
        )
        async with AsyncOffpathClient(settings=settings) as client:
            assert (await client.query("k8s")).event_id == STORED_ID

    def test_without_a_client_certificate_it_is_refused(
        self, pki: Pki, mtls_fake: FakeServer
    ) -> None:
        """TLS alone does not pass a server asking for client certificates."""
        settings = _settings(mtls_fake, tls=True, ca_file=pki.ca_file)
        with OffpathClient(settings=settings) as client, pytest.raises(grpc.RpcError) as caught:
            client.query("k8s")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert mtls_fake.script.calls["Query"] == 0

    def test_unreadable_certificate_names_the_variable(self, pki: Pki, tmp_path: Path) -> None:
        """A client certificate file that cannot be read: an error naming it, at
        the first call, not a gRPC failure."""
        settings = ClientSettings(
            tls=True,
            cert_file=str(tmp_path / "absent.pem"),
            key_file=str(tmp_path / "absent.key"),
        )
        with OffpathClient(settings=settings) as client, pytest.raises(SettingsError) as caught:
            client.query("k8s")
        assert str(caught.value).startswith(f"{ENV_CERT_FILE}={tmp_path / 'absent.pem'} ")


class TestServerName:
    def test_name_the_certificate_carries(self, pki: Pki, named_fake: FakeServer) -> None:
        """Calling 127.0.0.1 (a tunnel) with a certificate for a DNS name fails
        verification, and works with that name as tls_server_name."""
        plain = _settings(named_fake, tls=True, ca_file=pki.ca_file)
        with OffpathClient(settings=plain) as client, pytest.raises(grpc.RpcError) as caught:
            client.query("k8s")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        named = plain.replace(tls_server_name="offpath-query.offpath.svc")
        with OffpathClient(settings=named) as client:
            assert client.query("k8s").event_id == STORED_ID


class TestPlaintextToken:
    def test_token_reaches_a_loopback_ingest_only(self, fake: FakeServer) -> None:
        """Without TLS, a loopback AnalyticsIngest still gets the token (gRPC's
        local credentials); QueryService never does."""
        with OffpathClient(settings=_settings(fake, token=TOKEN)) as client:
            assert client.query("k8s").event_id == STORED_ID
            assert fake.script.authorization == []
            assert client.summary().event_count == 3
        assert fake.script.authorization == [f"Bearer {TOKEN}"]


def _run(*args: str) -> Result:
    return CliRunner().invoke(offpath, list(args))


class TestCommandLine:
    def test_tls_options_reach_a_mutual_tls_server(
        self, pki: Pki, mtls_fake: FakeServer, tmp_path: Path
    ) -> None:
        """--ca-file, --cert-file and --key-file (implying --tls) call a mutual TLS
        server; --token-file's token reaches AnalyticsIngest."""
        cert_file, key_file = pki.issue("client", "client@example.test")
        token_file = tmp_path / "token"
        token_file.write_text(f"# read token\n{TOKEN}\n", "utf-8")
        tls = ["--ca-file", pki.ca_file, "--cert-file", cert_file, "--key-file", key_file]
        result = _run("query", "k8s", "--query-target", mtls_fake.target, *tls)
        assert result.exit_code == 0, result.output
        result = _run(
            "summary", "--ingest-target", mtls_fake.target, *tls, "--token-file", str(token_file)
        )
        assert result.exit_code == 0, result.output
        assert mtls_fake.script.authorization == [f"Bearer {TOKEN}"]

    def test_plaintext_to_a_tls_server_says_so(self, mtls_fake: FakeServer) -> None:
        """A plaintext call to a TLS port: one line, exit 4, suggesting --tls; no
        traceback."""
        result = _run("query", "k8s", "--query-target", mtls_fake.target, "--timeout", "3")
        assert result.exit_code == EXIT_UNAVAILABLE, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"offpath: UNAVAILABLE: cannot reach {mtls_fake.target}")
        assert "use --tls" in line

    def test_tls_without_the_client_certificate_says_what_to_check(
        self, pki: Pki, mtls_fake: FakeServer
    ) -> None:
        """A TLS call a server refuses: one line naming the CA, the server name and
        the client certificate options."""
        result = _run("query", "k8s", "--query-target", mtls_fake.target, "--ca-file", pki.ca_file)
        assert result.exit_code == EXIT_UNAVAILABLE, result.output
        (line,) = result.stderr.splitlines()
        assert "--cert-file" in line
        assert "Traceback" not in result.output

    def test_plaintext_option_with_a_ca_file_is_refused(self, pki: Pki) -> None:
        """--plaintext and --ca-file contradict: exit 2 naming the setting."""
        result = _run("query", "k8s", "--plaintext", "--ca-file", pki.ca_file)
        assert result.exit_code == 2
        assert "TLS is off" in result.stderr

    def test_unreadable_token_file_is_one_line(self, tmp_path: Path) -> None:
        """--token-file that cannot be read: exit 2 naming the option and path."""
        result = _run("summary", "--token-file", str(tmp_path / "absent"))
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            f"offpath: --token-file={tmp_path / 'absent'} cannot be read: No such file or directory"
        )
