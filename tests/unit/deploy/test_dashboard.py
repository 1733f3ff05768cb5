"""The Grafana dashboard (deploy/grafana/offpath-dashboard.json): valid JSON whose
every query reads metrics the services export, under the names they export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

from offpath.emitter.emitter import EmitterStats
from offpath.emitter.metrics import emitter_samples
from offpath.ingest.consumer import ConsumerStats
from offpath.ingest.metrics import LAG_METRIC, consumer_samples
from offpath.kit.metrics import families
from offpath.kit.rpcmetrics import RpcMetrics

from .manifests import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "offpath-dashboard.json"
_METRIC = re.compile(r"\b((?:offpath|grpc_server|process)_[a-z0-9_]+)")


class _Emitter:
    """What emitter_samples reads of an emitter."""

    stats = EmitterStats()
    pending = 0


def _sample_names(metrics: Iterable[Metric]) -> set[str]:
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {m.name + s for m in metrics for s in suffixes.get(m.type, ("",))}


def exported() -> set[str]:
    """Every sample name the two services' /metrics can show."""
    process = ProcessCollector(registry=CollectorRegistry())
    names = _sample_names(RpcMetrics().collect())
    names |= _sample_names(families(emitter_samples(_Emitter())))  # type: ignore[arg-type]
    names |= _sample_names(families(consumer_samples(ConsumerStats())))
    names |= {LAG_METRIC + s for s in ("_bucket", "_sum", "_count")}
    names |= _sample_names(process.collect())
    return names


def _queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_query_reads_an_exported_metric() -> None:
    """Each metric a panel queries is one the code exports (a renamed metric fails here,
    not on an operator's empty graph)."""
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    names = exported()
    used = {name for expr in _queries(dashboard) for name in _METRIC.findall(expr)}
    assert used, "no metric found in the dashboard's queries"
    assert sorted(used - names) == []


def test_panels_cover_latency_drops_and_ingest_lag() -> None:
    """The dashboard shows what offpath exists for: RPC latency, every drop reason, SQS
    call latency and ingest lag; panel ids are unique."""
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    text = "\n".join(_queries(dashboard))
    for needle in (
        "grpc_server_handling_seconds_bucket",
        "offpath_emitter_events_dropped_total",
        "offpath_emitter_sqs_request_duration_seconds_bucket",
        "offpath_ingest_lag_seconds_bucket",
    ):
        assert needle in text, needle
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
