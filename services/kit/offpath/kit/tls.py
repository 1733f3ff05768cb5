"""Transport security for our gRPC servers (TLS, optionally mutual TLS).

Plaintext is the default (loopback, a sidecar or a mesh that terminates TLS);
:class:`TlsSettings` turns TLS on from certificate and key files, named by
``OFFPATH_TLS_CERT_FILE`` and ``OFFPATH_TLS_KEY_FILE``; with
``OFFPATH_TLS_CLIENT_CA_FILE`` too, every client must present a certificate
that CA signed (mutual TLS).

The files are read and checked when the settings are built (the chain and the
key parse and belong together, the CA parses), so a wrong path or a key of
another certificate stops start-up with one line naming the variable and the
file, instead of gRPC's "Failed to bind" at the port. They are read once:
a renewed certificate takes a restart (a rollout, in Kubernetes).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import structlog

from offpath.kit.settings import SettingsError, env_optional_str

log = structlog.get_logger("offpath.tls")

ENV_CERT_FILE: Final = "OFFPATH_TLS_CERT_FILE"
ENV_KEY_FILE: Final = "OFFPATH_TLS_KEY_FILE"
ENV_CLIENT_CA_FILE: Final = "OFFPATH_TLS_CLIENT_CA_FILE"

_CERTIFICATE_MARKER: Final = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER: Final = b"PRIVATE KEY-----"
_ENCRYPTED_KEY_MARKER: Final = b"ENCRYPTED"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The server's certificate chain and key (PEM files); with
    ``client_ca_file``, clients must present a certificate it signed."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsSettings | None:
        """TLS settings from ``OFFPATH_TLS_*``, checked; None (plaintext)
        when none is set. Certificate and key go together; a client CA needs
        both."""
        cert_file = env_optional_str(env, ENV_CERT_FILE)
        key_file = env_optional_str(env, ENV_KEY_FILE)
        client_ca_file = env_optional_str(env, ENV_CLIENT_CA_FILE)
        if cert_file is None and key_file is None:
            if client_ca_file is not None:
                raise SettingsError(
                    f"{ENV_CLIENT_CA_FILE} is set but TLS is off: mutual TLS needs "
                    f"{ENV_CERT_FILE} and {ENV_KEY_FILE} too"
                )
            return None
        if cert_file is None or key_file is None:
            given, missing = (
                (ENV_CERT_FILE, ENV_KEY_FILE) if key_file is None else (ENV_KEY_FILE, ENV_CERT_FILE)
            )
            raise SettingsError(f"{given} is set but {missing} is not: TLS needs both")
        settings = cls(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`SettingsError` unless the files are readable PEM, the
        key is the certificate's and unencrypted, and the client CA (if any)
        holds certificates."""
        cert = _read(ENV_CERT_FILE, self.cert_file)
        key = _read(ENV_KEY_FILE, self.key_file)
        if _CERTIFICATE_MARKER not in cert:
            raise SettingsError(
                f"{ENV_CERT_FILE}={self.cert_file} holds no PEM certificate "
                "(-----BEGIN CERTIFICATE-----)"
            )
        if _KEY_MARKER not in key:
            raise SettingsError(
                f"{ENV_KEY_FILE}={self.key_file} holds no PEM private key "
                "(-----BEGIN ... PRIVATE KEY-----)"
            )
        if _ENCRYPTED_KEY_MARKER in key.split(b"\n", 1)[0] or b"Proc-Type: 4,ENCRYPTED" in key:
            raise SettingsError(
                f"{ENV_KEY_FILE}={self.key_file} is encrypted; gRPC needs an unencrypted key"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # The password is only asked for an encrypted key, refused above.
            context.load_cert_chain(self.cert_file, self.key_file, password=b"")
        except ssl.SSLError as exc:
            raise SettingsError(
                f"{ENV_KEY_FILE}={self.key_file} and {ENV_CERT_FILE}={self.cert_file} "
                f"are not a certificate and its key ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise SettingsError(
                f"cannot load {ENV_CERT_FILE}={self.cert_file} with "
                f"{ENV_KEY_FILE}={self.key_file}: {exc}"
            ) from None
        if self.client_ca_file is not None:
            ca = _read(ENV_CLIENT_CA_FILE, self.client_ca_file)
            try:
                ssl.create_default_context(cadata=ca.decode("ascii", errors="replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise SettingsError(
                    f"{ENV_CLIENT_CA_FILE}={self.client_ca_file} holds no usable PEM "
                    f"certificate ({exc})"
                ) from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC's server credentials from the files (clients authenticated
        when there is a client CA)."""
        cert = _read(ENV_CERT_FILE, self.cert_file)
        key = _read(ENV_KEY_FILE, self.key_file)
        ca = None if self.client_ca_file is None else _read(ENV_CLIENT_CA_FILE, self.client_ca_file)
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable}={path} cannot be read: {exc.strerror or exc}") from None


def bind_port(server: grpc.aio.Server, address: str, tls: TlsSettings | None) -> int:
    """Bind ``address``, with TLS when ``tls`` is set; the bound port (0 when
    the bind failed). Logs ``grpc_transport`` with how the port is secured
    (plaintext, tls or mtls) and the files' paths, never their content."""
    if tls is None:
        log.info("grpc_transport", address=address, security="plaintext")
        return server.add_insecure_port(address)
    credentials = tls.server_credentials()
    log.info(
        "grpc_transport",
        address=address,
        security="mtls" if tls.mutual else "tls",
        cert_file=tls.cert_file,
        client_ca_file=tls.client_ca_file,
    )
    try:
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        # gRPC says "Failed to bind" for a busy port and for credentials its
        # TLS library refuses (a DSA key, say) alike: name both.
        raise RuntimeError(
            f"{exc}; the port may be in use, or gRPC cannot serve TLS with "
            f"{ENV_CERT_FILE}={tls.cert_file} and {ENV_KEY_FILE}={tls.key_file}"
        ) from exc
