"""offpath.kit.tls: TLS settings from OFFPATH_TLS_* (checked at start-up), and
bind_port serving TLS and mutual TLS on a real port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from offpath.kit.settings import ServerSettings, SettingsError
from offpath.kit.tls import (
    ENV_CERT_FILE,
    ENV_CLIENT_CA_FILE,
    ENV_KEY_FILE,
    TlsSettings,
    bind_port,
)

_METHOD = "/offpath.test.Echo/Echo"


class Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate,
    written as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("offpath-client@example.test")
        self.ca_file = folder / "ca.pem"
        self.cert_file = folder / "server.pem"
        self.key_file = folder / "server.key"
        self.client_cert_file = folder / "client.pem"
        self.client_key_file = folder / "client.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        self.server.private_key_pem.write_to_path(str(self.key_file))
        self.client.cert_chain_pems[0].write_to_path(str(self.client_cert_file))
        self.client.private_key_pem.write_to_path(str(self.client_key_file))

    def env(self, *, mutual: bool = False) -> dict[str, str]:
        env = {ENV_CERT_FILE: str(self.cert_file), ENV_KEY_FILE: str(self.key_file)}
        if mutual:
            env[ENV_CLIENT_CA_FILE] = str(self.ca_file)
        return env


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


class TestFromEnv:
    def test_plaintext_when_nothing_is_set(self) -> None:
        """No OFFPATH_TLS_* variable: None, the server binds plaintext."""
        assert TlsSettings.from_env({}) is None
        assert TlsSettings.from_env({ENV_CERT_FILE: " ", ENV_KEY_FILE: ""}) is None

    def test_certificate_and_key(self, pki: Pki) -> None:
        """Both files set and matching: TLS, not mutual."""
        tls = TlsSettings.from_env(pki.env())
        assert tls == TlsSettings(str(pki.cert_file), str(pki.key_file))
        assert not tls.mutual

    def test_client_ca_makes_it_mutual(self, pki: Pki) -> None:
        """With a client CA, clients must present a certificate."""
        tls = TlsSettings.from_env(pki.env(mutual=True))
        assert tls is not None
        assert tls.mutual
        assert tls.client_ca_file == str(pki.ca_file)

    def test_server_settings_read_them(self, pki: Pki) -> None:
        """ServerSettings.from_env carries the TLS settings every service binds with."""
        settings = ServerSettings.from_env(
            pki.env(),
            host_var="H",
            port_var="P",
            metrics_port_var="M",
            default_host="127.0.0.1",
            default_port=0,
            default_metrics_port=0,
        )
        assert settings.tls == TlsSettings(str(pki.cert_file), str(pki.key_file))

    @pytest.mark.parametrize(
        ("names", "message"),
        [
            ((ENV_CERT_FILE,), f"{ENV_CERT_FILE} is set but {ENV_KEY_FILE} is not"),
            ((ENV_KEY_FILE,), f"{ENV_KEY_FILE} is set but {ENV_CERT_FILE} is not"),
            ((ENV_CLIENT_CA_FILE,), f"{ENV_CLIENT_CA_FILE} is set but TLS is off"),
        ],
    )
    def test_incomplete_settings_are_refused(
        self, pki: Pki, names: tuple[str, ...], message: str
    ) -> None:
        """A certificate without its key (or the reverse), or a client CA
        without either, is an error naming what is missing, never plaintext."""
        env = {name: value for name, value in pki.env(mutual=True).items() if name in names}
        with pytest.raises(SettingsError, match=message):
            TlsSettings.from_env(env)

    @pytest.mark.parametrize("variable", [ENV_CERT_FILE, ENV_KEY_FILE, ENV_CLIENT_CA_FILE])
    def test_missing_file_names_the_variable_and_path(
        self, pki: Pki, tmp_path: Path, variable: str
    ) -> None:
        """A file that cannot be read: one line with the variable and the path."""
        env = pki.env(mutual=True)
        env[variable] = str(tmp_path / "absent.pem")
        with pytest.raises(SettingsError) as caught:
            TlsSettings.from_env(env)
        assert str(caught.value) == (
            f"{variable}={tmp_path / 'absent.pem'} cannot be read: No such file or directory"
        )

    def test_key_of_another_certificate_is_refused(self, pki: Pki, tmp_path: Path) -> None:
        """A key that is not the certificate's: an error naming both variables."""
        other = tmp_path / "other.key"
        pki.client.private_key_pem.write_to_path(str(other))
        env = {**pki.env(), ENV_KEY_FILE: str(other)}
        mismatch = f"{ENV_KEY_FILE}=.* and {ENV_CERT_FILE}=.* are not"
        with pytest.raises(SettingsError, match=mismatch):
            TlsSettings.from_env(env)

    @pytest.mark.parametrize(
        ("variable", "content", "message"),
        [
            (ENV_CERT_FILE, b"not a certificate\n", "holds no PEM certificate"),
            (ENV_KEY_FILE, b"not a key\n", "holds no PEM private key"),
            (
                ENV_CERT_FILE,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "are not a certificate and its key",
            ),
            (
                ENV_CLIENT_CA_FILE,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "holds no usable PEM certificate",
            ),
        ],
    )
    def test_invalid_pem_is_refused(
        self, pki: Pki, tmp_path: Path, variable: str, content: bytes, message: str
    ) -> None:
        """Files that are not PEM, or PEM that does not parse, stop start-up."""
        bad = tmp_path / "bad.pem"
        bad.write_bytes(content)
        env = {**pki.env(mutual=True), variable: str(bad)}
        with pytest.raises(SettingsError, match=message):
            TlsSettings.from_env(env)

    def test_encrypted_key_is_refused(self, pki: Pki, tmp_path: Path) -> None:
        """gRPC takes no key password: an encrypted key is refused as such."""
        key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), None)
        encrypted = tmp_path / "encrypted.key"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        with pytest.raises(SettingsError, match="is encrypted"):
            TlsSettings.from_env({**pki.env(), ENV_KEY_FILE: str(encrypted)})


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _served(tls: TlsSettings | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "offpath.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            ),
        )
    )
    port = bind_port(server, "127.0.0.1:0", tls)
    assert port
    await server.start()
    return server, port


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[int]:
    server, port = await _served(TlsSettings.from_env(pki.env()))
    yield port
    await server.stop(None)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[int]:
    server, port = await _served(TlsSettings.from_env(pki.env(mutual=True)))
    yield port
    await server.stop(None)


async def _call(port: int, credentials: grpc.ChannelCredentials | None) -> bytes:
    target = f"127.0.0.1:{port}"
    async with (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    ) as channel:
        echo = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
        reply: bytes = await echo(b"ping", timeout=5)
        return reply


class TestBindPort:
    async def test_plaintext_without_settings(self) -> None:
        """tls None: a plaintext port, as before."""
        server, port = await _served(None)
        try:
            assert await _call(port, None) == b"ping"
        finally:
            await server.stop(None)

    async def test_a_failed_tls_bind_names_the_files(self, pki: Pki) -> None:
        """gRPC's "Failed to bind" (a busy port, or a key its TLS library
        refuses) says which certificate and key were being served."""
        tls = TlsSettings.from_env(pki.env())
        first, port = await _served(tls)
        second = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        try:
            with pytest.raises(RuntimeError) as caught:
                bind_port(second, f"127.0.0.1:{port}", tls)
            assert f"{ENV_CERT_FILE}={pki.cert_file} and {ENV_KEY_FILE}={pki.key_file}" in str(
                caught.value
            )
        finally:
            await second.stop(None)
            await first.stop(None)

    async def test_tls_serves_a_client_trusting_the_ca(self, pki: Pki, tls_server: int) -> None:
        """A client verifying the server with the test CA is served."""
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem.bytes())
        assert await _call(tls_server, credentials) == b"ping"

    async def test_tls_refuses_plaintext(self, tls_server: int) -> None:
        """A plaintext client does not get through to the handler."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(tls_server, None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_mtls_refuses_a_client_without_a_certificate(
        self, pki: Pki, mtls_server: int
    ) -> None:
        """With a client CA, a TLS client that presents no certificate is refused."""
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem.bytes())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(mtls_server, credentials)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_mtls_serves_a_client_with_a_certificate(
        self, pki: Pki, mtls_server: int
    ) -> None:
        """A client presenting a certificate the client CA signed is served."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert_pem.bytes(),
            private_key=pki.client.private_key_pem.bytes(),
            certificate_chain=pki.client.cert_chain_pems[0].bytes(),
        )
        assert await _call(mtls_server, credentials) == b"ping"

    async def test_mtls_refuses_a_certificate_from_another_ca(
        self, pki: Pki, mtls_server: int
    ) -> None:
        """A client certificate signed by some other CA is refused."""
        stranger = trustme.CA().issue_cert("offpath-client@example.test")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert_pem.bytes(),
            private_key=stranger.private_key_pem.bytes(),
            certificate_chain=stranger.cert_chain_pems[0].bytes(),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(mtls_server, credentials)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
