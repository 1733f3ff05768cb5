"""The client and the command line need grpcio, protobuf and click only: with
the services' dependencies unimportable they still import and work, and
`offpath dlq` (which needs boto3) and `offpath report --png` (which needs
matplotlib, the report extra) say so instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import FakeServer

SERVER_SIDE = (
    "boto3",
    "botocore",
    "structlog",
    "prometheus_client",
    "uuid_utils",
    "grpc_health",
    "grpc_reflection",
)

# Run in a fresh interpreter where importing any server-side package fails,
# as it would where only the client's dependencies are installed.
_PROBE = """
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked)")
        return None
sys.meta_path.insert(0, Block())
from offpath.client import AsyncOffpathClient, OffpathClient
from offpath.client.cli import main
sys.argv = ["offpath", *sys.argv[2:]]
main()
"""


def _offpath(
    *args: str, blocked: tuple[str, ...] = SERVER_SIDE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(blocked), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_queries_without_server_side_packages(fake: FakeServer) -> None:
    """`offpath query` works in an interpreter where boto3, structlog,
    prometheus_client and the rest cannot be imported."""
    done = _offpath("query", "k8s", "--query-target", fake.target, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "yes: k8s"


def test_dlq_without_boto3_exits_2_with_a_message() -> None:
    """`offpath dlq list` without boto3: exit 2, one line naming boto3, no traceback."""
    done = _offpath("dlq", "list")
    assert done.returncode == 2
    assert "offpath dlq needs boto3" in done.stderr
    assert "Traceback" not in done.stderr


def test_report_png_without_matplotlib_exits_2_naming_the_extra(
    fake: FakeServer, tmp_path: Path
) -> None:
    """`offpath report --png` without matplotlib: exit 2 before any call, one line
    saying to pip install "offpath[report]", no traceback and no file."""
    out = tmp_path / "r.png"
    done = _offpath(
        "report",
        "--ingest-target",
        fake.target,
        "--png",
        str(out),
        blocked=(*SERVER_SIDE, "matplotlib"),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert 'pip install "offpath[report]"' in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert fake.script.calls["GetSummary"] == 0


def test_report_without_png_needs_no_matplotlib(fake: FakeServer) -> None:
    """The terminal report alone works without matplotlib (and the server-side packages)."""
    done = _offpath("report", "--ingest-target", fake.target, blocked=(*SERVER_SIDE, "matplotlib"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("offpath report: ")
