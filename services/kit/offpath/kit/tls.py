"""Transport security for our gRPC servers (TLS, optionally mutual TLS).

Plaintext is the default (loopback, a sidecar or a mesh that terminates TLS);
:class:`TlsSettings` turns TLS on from certificate and key files.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The server's certificate chain and key (PEM files); with
    ``client_ca_file``, clients must present a certificate it signed."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


def bind_port(server: grpc.aio.Server, address: str, tls: TlsSettings | None) -> int:
    """Bind ``address``, with TLS when ``tls`` is set; the bound port (0 when
    the bind failed)."""
    if tls is None:
        return server.add_insecure_port(address)
    raise NotImplementedError("TLS is being built")
