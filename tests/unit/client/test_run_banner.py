"""The `make run` banner prints commands that reach the ports it started on."""

from __future__ import annotations

from offpath.dev.stack import banner


def _banner(query: str, ingest: str, env: dict[str, str]) -> str:
    return banner(
        query_target=query,
        ingest_target=ingest,
        endpoint="http://127.0.0.1:4566",
        metrics=["http://127.0.0.1:9464/metrics", "http://127.0.0.1:9465/metrics"],
        env=env,
    )


def test_other_ports_are_exported_for_the_cli() -> None:
    """Started on other ports, the banner exports the targets the CLI reads, and
    its buf curl line uses the QueryService port it started on."""
    text = _banner("127.0.0.1:6001", "127.0.0.1:6002", {})
    assert "export OFFPATH_QUERY_TARGET=127.0.0.1:6001 OFFPATH_INGEST_TARGET=127.0.0.1:6002" in text
    assert "http://127.0.0.1:6001/offpath.v1.QueryService/Query" in text


def test_default_ports_need_no_export() -> None:
    """On the client's defaults the banner's commands work as printed."""
    assert "export" not in _banner("127.0.0.1:50051", "127.0.0.1:50052", {})


def test_a_stale_target_variable_is_overridden() -> None:
    """A shell with OFFPATH_QUERY_TARGET set elsewhere is told the stack's address."""
    text = _banner("127.0.0.1:50051", "127.0.0.1:50052", {"OFFPATH_QUERY_TARGET": "h:1"})
    assert "export OFFPATH_QUERY_TARGET=127.0.0.1:50051\n" in text
