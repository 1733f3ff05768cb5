"""offpath.dev.dashboard: Prometheus's histogram_quantile computation, and the
PromQL subset that evaluates the Grafana dashboard's panels over scrapes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from offpath.dev.dashboard import (
    DASHBOARD,
    Labels,
    Promql,
    PromqlError,
    Run,
    Scrape,
    Value,
    counter_increase,
    histogram_quantile,
    legend,
    panels,
    parse_exposition,
    render,
)

INF = math.inf
# Cumulative buckets: 10 at or below 0.1 s, 20 more up to 0.5 s, 10 more up to 1 s.
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


def _labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def _histogram(counts: list[float], **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Cumulative bucket samples for the le bounds of BUCKETS."""
    bounds = ("0.1", "0.5", "1.0", "+Inf")
    return {_labels(le=le, **labels): count for le, count in zip(bounds, counts, strict=True)}


def _only(value: Value) -> tuple[Labels, float]:
    """The one series of an instant vector (the test fails on a number or on more)."""
    assert isinstance(value, dict)
    ((labels, number),) = value.items()
    return labels, number


class TestHistogramQuantile:
    def test_interpolates_inside_the_bucket_the_rank_falls_in(self) -> None:
        """The median of 40 observations is rank 20, 10 into the (0.1, 0.5] bucket of
        20: 0.1 + 0.4 x 10/20 = 0.3; p99 (rank 39.6) is 0.5 + 0.5 x 9.6/10 = 0.98."""
        assert histogram_quantile(0.5, BUCKETS) == pytest.approx(0.3)
        assert histogram_quantile(0.99, BUCKETS) == pytest.approx(0.98)

    def test_the_first_bucket_starts_at_zero(self) -> None:
        """A rank inside the first bucket interpolates from 0: p10 (rank 4) is 0.04."""
        assert histogram_quantile(0.1, BUCKETS) == pytest.approx(0.04)

    def test_a_rank_in_the_inf_bucket_answers_the_highest_finite_bound(self) -> None:
        """Observations above every finite bound make the quantile that bound, 1.0."""
        assert histogram_quantile(0.99, [(0.1, 10.0), (1.0, 20.0), (INF, 40.0)]) == 1.0

    def test_no_observations_or_no_inf_bucket_is_nan(self) -> None:
        """Zero counts, or buckets without +Inf, have no quantile (NaN, a gap)."""
        assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]))
        assert math.isnan(histogram_quantile(0.5, [(0.1, 1.0), (1.0, 2.0)]))

    def test_input_order_does_not_matter(self) -> None:
        """Buckets given in any order are sorted by bound first."""
        assert histogram_quantile(0.5, BUCKETS[::-1]) == pytest.approx(0.3)


class TestPromql:
    def test_quantile_of_bucket_rates_is_the_quantile_of_the_window(self) -> None:
        """histogram_quantile over rate() of two scrapes sees only the observations
        between them: earlier ones (all fast) do not pull the median down."""
        before = _histogram([100.0, 100.0, 100.0, 100.0], pod="q")
        # Between the scrapes: BUCKETS' 40 observations.
        after = _histogram([110.0, 130.0, 140.0, 140.0], pod="q")
        promql = Promql(
            [Scrape(0.0, {"h_bucket": before}), Scrape(2.0, {"h_bucket": after})],
            {"__rate_interval": "8s"},
        )
        (_, second) = promql.evaluate(
            "histogram_quantile(0.5, sum by (le) (rate(h_bucket[$__rate_interval])))"
        )
        labels, number = _only(second)
        assert labels == frozenset()
        assert number == pytest.approx(0.3)

    def test_rate_counts_a_reset_as_a_restart_from_zero(self) -> None:
        """A counter that fell (a restarted process) adds its new value, not a
        negative increase: 10 -> 30, reset to 5 -> 25 is 20 + 5 + 20 = 45 in 6 s."""
        assert counter_increase([(0.0, 10.0), (2.0, 30.0), (4.0, 5.0), (6.0, 25.0)]) == 45.0
        series = _labels(grpc_code="OK")
        scrapes = [
            Scrape(float(t), {"c_total": {series: v}})
            for t, v in ((0, 10.0), (2, 30.0), (4, 5.0), (6, 25.0))
        ]
        values = Promql(scrapes, {}).evaluate("sum(rate(c_total[8s]))")
        labels, number = _only(values[-1])
        assert labels == frozenset()
        assert number == pytest.approx(45.0 / 6)

    def test_matchers_group_by_ratio_and_filter(self) -> None:
        """!= and = matchers select, sum by groups, / matches label sets one to one,
        and > 0 drops series that are not above 0."""
        ok = _labels(grpc_method="Query", grpc_code="OK", namespace="local")
        bad = _labels(grpc_method="Query", grpc_code="INVALID_ARGUMENT", namespace="local")
        other = _labels(grpc_method="Query", grpc_code="OK", namespace="elsewhere")
        scrapes = [
            Scrape(0.0, {"h_total": {ok: 0.0, bad: 0.0, other: 0.0}}),
            Scrape(2.0, {"h_total": {ok: 180.0, bad: 20.0, other: 999.0}}),
        ]
        promql = Promql(scrapes, {"namespace": "local", "__rate_interval": "8s"})
        ratio = promql.evaluate(
            'sum by (grpc_method) (rate(h_total{namespace="$namespace",grpc_code!="OK"}'
            "[$__rate_interval])) / sum by (grpc_method) "
            '(rate(h_total{namespace="$namespace"}[$__rate_interval]))'
        )
        labels, number = _only(ratio[1])
        assert labels == _labels(grpc_method="Query")
        assert number == pytest.approx(0.1)
        by_code = promql.evaluate('sum by (grpc_code) (rate(h_total{namespace="local"}[8s])) > 10')
        labels, number = _only(by_code[1])
        assert labels == _labels(grpc_code="OK")
        assert number == pytest.approx(90.0)

    def test_arithmetic_on_numbers_and_vectors(self) -> None:
        """Numbers, ^ and * / apply to every element: bytes / 2^30 is GiB."""
        scrapes = [Scrape(0.0, {"m": {_labels(pod="q"): 2.0 * 2**30}})]
        assert Promql(scrapes, {}).evaluate("m / 2^30") == [{_labels(pod="q"): 2.0}]
        assert Promql(scrapes, {}).evaluate("1000 * 3 / 4") == [750.0]

    def test_outside_the_subset_is_an_error(self) -> None:
        """A function the evaluator does not know raises instead of drawing something else."""
        with pytest.raises(PromqlError):
            Promql([], {}).compile("avg(rate(x[1m]))")
        with pytest.raises(PromqlError):
            Promql([], {}).compile("x[1m]")

    def test_every_panel_of_the_dashboard_compiles(self) -> None:
        """Each time-series panel's every query is in the subset: the rendering can
        draw the whole dashboard."""
        dashboard = json.loads(DASHBOARD.read_text("utf-8"))
        found = [panel for _, row in panels(dashboard) for panel in row]
        assert len(found) >= 6
        promql = Promql([], {"namespace": "local", "__rate_interval": "8s"})
        for panel in found:
            for target in panel["targets"]:
                promql.compile(target["expr"])


def test_exposition_gets_the_targets_labels() -> None:
    """Parsed samples keep their labels and gain the scrape target's (namespace, pod)."""
    text = (
        '# TYPE grpc_server_handled_total counter\ngrpc_server_handled_total{grpc_code="OK"} 7.0\n'
    )
    samples = parse_exposition(text, {"namespace": "local", "pod": "query"})
    assert samples["grpc_server_handled_total"] == {
        _labels(grpc_code="OK", namespace="local", pod="query"): 7.0
    }


def test_legend_fills_labels_and_leaves_missing_ones_empty() -> None:
    """{{label}} becomes the label's value; a label the series lacks becomes nothing."""
    assert legend("p99 {{grpc_method}} {{worker}}", _labels(grpc_method="Query")) == "p99 Query"


def _synthetic_run() -> Run:
    """Ten scrapes of a steady 100 OK and 1 failed Query a second, 1 ms each."""
    ok = _labels(grpc_method="Query", grpc_code="OK", namespace="local", pod="query")
    bad = _labels(grpc_method="Query", grpc_code="INVALID_ARGUMENT", namespace="local", pod="query")
    scrapes = []
    for i in range(10):
        t = 2.0 * i
        buckets = {
            _labels(le=le, grpc_method="Query", namespace="local", pod="query"): 202.0 * i
            for le in ("0.0005", "0.001", "+Inf")
        }
        buckets[_labels(le="0.0005", grpc_method="Query", namespace="local", pod="query")] = 0.0
        scrapes.append(
            Scrape(
                t,
                {
                    "grpc_server_handled_total": {ok: 200.0 * i, bad: 2.0 * i},
                    "grpc_server_handling_seconds_bucket": buckets,
                },
            )
        )
    return Run(100.0, 10.0, 1.0, scrapes, load_start_s=2.0, load_end_s=12.0, sent=1000)


def test_a_saved_run_draws_the_same() -> None:
    """A run written with --save and read with --load evaluates to the same series."""
    run = _synthetic_run()
    again = Run.from_json(json.loads(json.dumps(run.to_json())))
    expr = 'sum by (grpc_code) (rate(grpc_server_handled_total{namespace="local"}[8s]))'
    assert Promql(again.scrapes, {}).evaluate(expr) == Promql(run.scrapes, {}).evaluate(expr)
    assert (again.sent, again.load_start_s, again.load_end_s) == (1000, 2.0, 12.0)


def test_render_writes_every_panel_into_one_png(tmp_path: Path) -> None:
    """render() draws the dashboard's panels from scrapes into a 1440 x 900 PNG under
    200 KB (the README carries it)."""
    out = tmp_path / "dashboard.png"
    render(_synthetic_run(), json.loads(DASHBOARD.read_text("utf-8")), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1440, 900)
    assert len(data) < 200_000
