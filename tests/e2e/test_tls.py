"""QueryService over TLS and mutual TLS, as processes on free ports, with a CA and
certificates made here (trustme): `buf curl` with the CA answers, plaintext is
refused, the Python client and the CLI speak TLS, a client certificate is
required once a client CA is set, workers serve TLS too, and a bad certificate
file stops start-up with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from offpath.client import OffpathClient
from offpath.client.settings import ClientSettings
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log

QUERY = "/offpath.v1.QueryService/Query"


@dataclass(frozen=True)
class Pki:
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1 and localhost, a client one."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("offpath-e2e@example.test")

    def write(name: str, blob: trustme.Blob) -> str:
        blob.write_to_path(str(folder / name))
        return str(folder / name)

    return Pki(
        ca_file=write("ca.pem", ca.cert_pem),
        cert_file=write("server.pem", server.cert_chain_pems[0]),
        key_file=write("server.key", server.private_key_pem),
        client_cert_file=write("client.pem", client.cert_chain_pems[0]),
        client_key_file=write("client.key", client.private_key_pem),
    )


def _query_env(pki: Pki, *, mutual: bool, workers: int = 1) -> dict[str, str]:
    env = {
        "OFFPATH_QUERY_HOST": "127.0.0.1",
        "OFFPATH_QUERY_PORT": "0",
        "OFFPATH_QUERY_METRICS_PORT": "0",
        "OFFPATH_QUERY_WORKERS": str(workers),
        # The transport is under test, not analytics: no AWS endpoint needed.
        "OFFPATH_ANALYTICS": "off",
        "OFFPATH_SHUTDOWN_GRACE_S": "1",
        "OFFPATH_TLS_CERT_FILE": pki.cert_file,
        "OFFPATH_TLS_KEY_FILE": pki.key_file,
    }
    if mutual:
        env["OFFPATH_TLS_CLIENT_CA_FILE"] = pki.ca_file
    return env


@dataclass
class Running:
    target: str
    log: Path


def _serve(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, *, mutual: bool, workers: int = 1
) -> Iterator[Running]:
    logs = tmp_path_factory.mktemp("tls-logs")
    stack = DevStack(log_dir=logs)
    try:
        stack.spawn("query", "offpath.query", _query_env(pki, mutual=mutual, workers=workers))
        yield Running(f"127.0.0.1:{stack.port('query')}", logs / "query.log")
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tls_query(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    """QueryService serving TLS."""
    yield from _serve(tmp_path_factory, pki, mutual=False)


@pytest.fixture(scope="module")
def mtls_query(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    """QueryService serving mutual TLS (client certificates from the test CA)."""
    yield from _serve(tmp_path_factory, pki, mutual=True)


def _buf() -> str:
    path = os.environ.get("OFFPATH_BUF")
    if not path or not os.path.exists(path):
        pytest.skip("buf CLI not installed (make test installs it and sets OFFPATH_BUF)")
    return path


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), "curl", "--protocol", "grpc", "--reflect-protocol", "grpc-v1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _settings(target: str, **fields: object) -> ClientSettings:
    return ClientSettings(query_target=target, timeout_s=5, max_attempts=1, **fields)  # type: ignore[arg-type]


class TestTls:
    def test_buf_curl_with_the_ca_answers(self, pki: Pki, tls_query: Running) -> None:
        """`buf curl --cacert <ca> https://...` gets Query's schema by reflection
        over TLS and an answer."""
        done = _buf_curl(
            "--cacert",
            pki.ca_file,
            "-d",
            '{"query":"kubernetes"}',
            f"https://{tls_query.target}{QUERY}",
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["answer"]
        assert answer["matchedSkills"]

    def test_buf_curl_without_the_ca_is_refused(self, tls_query: Running) -> None:
        """A certificate from an unknown CA fails buf curl's verification (its
        reflection call fails first, so no schema and no answer)."""
        done = _buf_curl("-d", '{"query":"kubernetes"}', f"https://{tls_query.target}{QUERY}")
        assert done.returncode != 0
        assert done.stdout == ""

    def test_plaintext_is_refused(self, tls_query: Running) -> None:
        """Plaintext HTTP/2 (buf curl) and a plaintext gRPC client both fail."""
        done = _buf_curl(
            "--http2-prior-knowledge",
            "-d",
            '{"query":"kubernetes"}',
            f"http://{tls_query.target}{QUERY}",
        )
        assert done.returncode != 0
        with (
            OffpathClient(settings=_settings(tls_query.target)) as client,
            pytest.raises(grpc.RpcError) as caught,
        ):
            client.query("kubernetes")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_python_client_with_the_ca(self, pki: Pki, tls_query: Running) -> None:
        """The Python client verifying with the test CA is answered."""
        settings = _settings(tls_query.target, tls=True, ca_file=pki.ca_file)
        with OffpathClient(settings=settings) as client:
            assert client.query("kubernetes").answer

    def test_cli_with_the_ca(self, pki: Pki, tls_query: Running) -> None:
        """`offpath query --ca-file` answers; without it the one-line error says
        to check TLS, with no traceback."""
        base = [sys.executable, "-m", "offpath.client", "query", "kubernetes"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFPATH_CLIENT_")}
        args = ["--query-target", tls_query.target, "-o", "json"]
        done = subprocess.run(
            [*base, *args, "--ca-file", pki.ca_file],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["answer"]
        refused = subprocess.run(
            [*base, *args, "--timeout", "3"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert refused.returncode == 4
        assert "use --tls" in refused.stderr
        assert "Traceback" not in refused.stderr

    def test_start_up_logs_tls(self, tls_query: Running) -> None:
        """The log says the port is TLS and names the certificate, never the key."""
        (transport,) = [r for r in read_log(tls_query.log) if r["event"] == "grpc_transport"]
        assert transport["security"] == "tls"
        assert "BEGIN" not in json.dumps(transport)


class TestMutualTls:
    def test_without_a_client_certificate_it_is_refused(
        self, pki: Pki, mtls_query: Running
    ) -> None:
        """TLS alone (buf curl, the Python client) does not pass the client check."""
        done = _buf_curl(
            "--cacert", pki.ca_file, "-d", '{"query":"k8s"}', f"https://{mtls_query.target}{QUERY}"
        )
        assert done.returncode != 0
        settings = _settings(mtls_query.target, tls=True, ca_file=pki.ca_file)
        with OffpathClient(settings=settings) as client, pytest.raises(grpc.RpcError) as caught:
            client.query("kubernetes")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_with_a_client_certificate_it_is_served(self, pki: Pki, mtls_query: Running) -> None:
        """With a certificate the client CA signed, buf curl and the client are served."""
        done = _buf_curl(
            "--cacert",
            pki.ca_file,
            "--cert",
            pki.client_cert_file,
            "--key",
            pki.client_key_file,
            "-d",
            '{"query":"kubernetes"}',
            f"https://{mtls_query.target}{QUERY}",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["answer"]
        settings = _settings(
            mtls_query.target,
            tls=True,
            ca_file=pki.ca_file,
            cert_file=pki.client_cert_file,
            key_file=pki.client_key_file,
        )
        with OffpathClient(settings=settings) as client:
            assert client.query("kubernetes").answer
        (transport,) = [r for r in read_log(mtls_query.log) if r["event"] == "grpc_transport"]
        assert transport["security"] == "mtls"


def test_workers_serve_tls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> None:
    """With two workers, each worker binds the shared port with TLS: new
    connections (spread by the kernel) are all answered over TLS, none in plaintext."""
    for running in _serve(tmp_path_factory, pki, mutual=False, workers=2):
        settings = _settings(running.target, tls=True, ca_file=pki.ca_file)
        for _ in range(6):
            # A fresh channel each time: a new connection, which any worker may accept.
            with OffpathClient(settings=settings) as client:
                assert client.query("kubernetes").answer
        with (
            OffpathClient(settings=_settings(running.target)) as client,
            pytest.raises(grpc.RpcError),
        ):
            client.query("kubernetes")
        transports = [r for r in read_log(running.log) if r["event"] == "grpc_transport"]
        assert [r["security"] for r in transports] == ["tls", "tls"]


def test_bad_certificate_file_stops_start_up(pki: Pki, tmp_path: Path) -> None:
    """A key that is not the certificate's: exit 2, one line naming both
    variables, no traceback."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OFFPATH_"))}
    env = {**base, **_query_env(pki, mutual=False), "OFFPATH_TLS_KEY_FILE": pki.client_key_file}
    done = subprocess.run(
        [sys.executable, "-m", "offpath.query"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("offpath-query: OFFPATH_TLS_KEY_FILE=")
    assert "OFFPATH_TLS_CERT_FILE=" in line
    assert "Traceback" not in done.stderr
