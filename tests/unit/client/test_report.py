"""offpath report: the terminal report and the PNG drawn from a GetSummaryResponse
fixture, and the command through the real AnalyticsIngest servicer over the wire."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from google.protobuf import duration_pb2

from offpath.client import report
from offpath.client.cli import offpath
from offpath.ingest import rollups
from offpath.ingest.servicer import IngestServicer
from offpath.ingest.store import EventStore, create_table_request, rollup_table_for
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

START = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fixture_summary(hours: int = 24, *, per_bucket: bool = True) -> ingest_pb2.GetSummaryResponse:
    """A day of hourly buckets (every fourth one empty) with every field filled."""
    summary = ingest_pb2.GetSummaryResponse(
        error_count=0,
        mean_processing_ms=1.6,
        p50_processing_ms=1.1,
        p95_processing_ms=3.9,
        p99_processing_ms=8.2,
        processing_ms_relative_error=rollups.RELATIVE_ERROR,
        top_skills=[
            ingest_pb2.SkillCount(name=name, count=count)
            for name, count in (("Kubernetes", 900), ("Python", 610), ("gRPC", 300), ("AWS", 12))
        ],
        top_queries=[
            ingest_pb2.QueryCount(text="does she know k8s?", count=500),
            ingest_pb2.QueryCount(text="terraform " * 8, count=200),
        ],
        other_query_count=40,
        errors_by_code=[
            ingest_pb2.StatusCount(code=3, count=30),
            ingest_pb2.StatusCount(code=13, count=2),
        ],
        models=[ingest_pb2.ModelUsage(model="catalog", event_count=1200, token_count=48_000)],
    )
    total = errors = 0
    for hour in range(hours):
        if hour % 4 == 3:
            continue
        events, bad = 50 + 10 * hour, hour % 3
        bucket = summary.volume.add(event_count=events, error_count=bad)
        if per_bucket:
            bucket.p50_processing_ms = 1.0 + hour / 10
            bucket.p95_processing_ms = 3.0 + hour / 5
            bucket.p99_processing_ms = 6.0 + hour / 2
        bucket.start_time.FromDatetime(START + timedelta(hours=hour))
        total, errors = total + events, errors + bad
    summary.event_count, summary.error_count = total, errors
    summary.bucket_width.FromSeconds(3600)
    summary.covered_start_time.FromDatetime(START)
    summary.covered_end_time.FromDatetime(START + timedelta(hours=hours))
    return summary


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class TestTextReport:
    def test_fits_80_columns_and_has_every_section(self) -> None:
        """Every line is at most 80 characters, and the title, totals and each chart
        (volume, percentiles, per bucket, skills, queries, errors, models) are there."""
        lines = report.text_report(fixture_summary(), asked="last 24h")
        assert max(len(line) for line in lines) <= 80
        text = "\n".join(lines)
        assert lines[0] == "offpath report: 2026-11-27 00:00 to 2026-11-28 00:00 UTC (last 24h)"
        for heading in (
            "Events per 1h",
            "Processing time, ms (each within ±4.4 %)",
            "Processing time per 1h, ms: p50 / p95 / p99",
            "Top skills",
            "Top queries",
            "Errors by status code",
            "Tokens by model",
        ):
            assert heading in text, heading
        assert "INVALID_ARGUMENT" in text
        assert "INTERNAL" in text
        assert "48,000 (1,200)" in text

    def test_bars_are_scaled_to_the_largest_value(self) -> None:
        """The largest value's bar is the longest and values in between are in proportion."""
        lines = report.bar_chart([("a", 100, "100"), ("b", 50, "50"), ("c", 1, "1")])
        bars = [line.count("█") for line in lines]
        assert bars[0] > bars[1] > bars[2]
        assert bars[1] == pytest.approx(bars[0] / 2, abs=1)
        assert lines[2].split()[1] in report._EIGHTHS  # a small value still shows

    def test_empty_buckets_are_shown_as_zero(self) -> None:
        """The reply leaves empty buckets out; the volume chart has a row for each hour."""
        lines = report.text_report(fixture_summary())
        start = lines.index("Events per 1h (errors in brackets)") + 1
        rows = lines[start : start + 24]
        assert [row.split()[0] for row in rows] == [f"{h:02d}:00" for h in range(24)]
        assert rows[3].split()[-1] == "0"

    def test_many_buckets_are_merged_to_at_most_25_rows(self) -> None:
        """A week of hourly buckets is charted in 24 rows of 7 hours, labelled with
        the day and the hour each starts at."""
        lines = report.text_report(fixture_summary(hours=168))
        start = lines.index("Events per 7h (errors in brackets)") + 1
        end = lines.index("", start)
        assert end - start == 24
        assert [line.split()[:2] for line in lines[start : start + 2]] == [
            ["11-27", "00:00"],
            ["11-27", "07:00"],
        ]

    def test_no_events_says_so(self) -> None:
        """An empty range prints the title, zero totals and one line saying so."""
        empty = fixture_summary(hours=1)
        del empty.volume[:]
        empty.event_count = 0
        lines = report.text_report(empty)
        assert lines[-1] == "no events in this range"
        assert "0 events" in lines[1]


class TestPng:
    def test_writes_a_png_of_1200_by_800(self, tmp_path: Path) -> None:
        """The PNG is a valid image of 1200 x 800 pixels that matplotlib reads back,
        and of a sensible size (charts, not a blank page)."""
        from matplotlib import image

        out = tmp_path / "report.png"
        report.write_png(fixture_summary(), out, asked="last 24h")
        assert _png_size(out) == (1200, 800)
        pixels = image.imread(out)
        assert pixels.shape[:2] == (800, 1200)
        assert 20_000 < out.stat().st_size < 400_000
        # Charts, not a blank page: a few per cent of the pixels are not near white.
        assert (pixels[..., :3] < 0.9).any(axis=-1).mean() > 0.02

    def test_draws_whole_range_levels_for_an_older_server(self, tmp_path: Path) -> None:
        """A reply without per-bucket percentiles still gives a PNG (the range's
        percentiles as levels), as does a range without events."""
        out = tmp_path / "older.png"
        report.write_png(fixture_summary(per_bucket=False), out)
        assert _png_size(out) == (1200, 800)
        empty = fixture_summary(hours=2)
        del empty.volume[:], empty.top_skills[:], empty.top_queries[:]
        report.write_png(empty, tmp_path / "empty.png")
        assert _png_size(tmp_path / "empty.png") == (1200, 800)


# -- the command, over the wire to the real servicer ---------------------------------------

TABLE = "events"


def _events(now: datetime, count: int) -> list[analytics_pb2.AnalyticsEvent]:
    """``count`` events over the last three hours: slower each hour, a few errors."""
    rng = random.Random(7)
    out = []
    for i in range(count):
        hours_ago = i % 3
        event = analytics_pb2.AnalyticsEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))),
            service="offpath.v1.QueryService",
            method="/offpath.v1.QueryService/Query",
            producer_id="producer-1",
            query=("does she know k8s?", "Terraform", "python and grpc")[i % 3],
            status_code=3 if i % 10 == 0 else 0,
            model="catalog",
            token_count=40,
            processing_time=duration_pb2.Duration(nanos=(1 + hours_ago * 5) * 1_000_000),
            matched_skills=[analytics_pb2.MatchedSkill(name="Kubernetes", score=0.9)],
        )
        event.occurred_at.FromDatetime(now - timedelta(hours=hours_ago, minutes=1))
        out.append(event)
    return out


@pytest.fixture
async def ingest_target() -> AsyncIterator[str]:
    """AnalyticsIngest's servicer over a fake table holding 60 events, on
    127.0.0.1:<free port>; stopped afterwards."""
    ddb = FakeDynamoDb()
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    store = EventStore(ddb, TABLE, shards=2, sleep=lambda _: None)
    events = _events(datetime.now(UTC), 60)
    assert store.write([("b-1", events)], ingested_ns=time.time_ns()) == 60
    server = grpc.aio.server()
    ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(IngestServicer(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _offpath(*args: str) -> Result:
    """The CLI in a worker thread, so the server keeps serving on this loop."""
    return await asyncio.to_thread(CliRunner().invoke, offpath, list(args))


class TestCommand:
    async def test_report_and_png_from_the_servicer(
        self, ingest_target: str, tmp_path: Path
    ) -> None:
        """`offpath report --png` over the wire prints the charts of the stored events
        (60 events, 6 errors, their skill and queries) in 80 columns and writes the PNG."""
        out = tmp_path / "r.png"
        result = await _offpath("report", "--ingest-target", ingest_target, "--png", str(out))
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert "60 events   6 errors (10.0 %)" in text
        assert "Kubernetes" in text
        assert "does she know k8s?" in text
        assert "INVALID_ARGUMENT" in text
        assert f"chart written to {out}" in text
        assert _png_size(out) == (1200, 800)
        # The report fits 80 columns; the last line names the file as given.
        report_lines = text.splitlines()[:-1]
        assert max(len(line) for line in report_lines) <= 80

    async def test_json_is_the_summary_document_with_bucket_percentiles(
        self, ingest_target: str
    ) -> None:
        """--output json prints the summary document: totals, and each bucket with
        its own percentiles (the older hours were slower)."""
        result = await _offpath("report", "--ingest-target", ingest_target, "-o", "json")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert (document["eventCount"], document["errorCount"]) == ("60", "6")
        p50s = [bucket["p50ProcessingMs"] for bucket in document["volume"]]
        assert len(p50s) == 3
        assert p50s == sorted(p50s, reverse=True)  # 11 ms, 6 ms, 1 ms: oldest first

    async def test_summary_shows_the_new_fields(self, ingest_target: str) -> None:
        """`offpath summary` shows percentiles, errors by code, top queries and models."""
        result = await _offpath("summary", "--ingest-target", ingest_target)
        assert result.exit_code == 0, result.output
        text = result.stdout
        for expected in (
            "p99",
            "INVALID_ARGUMENT (3)",
            "'does she know k8s?'",
            "catalog",
            "3 bucket(s) with events",
        ):
            assert expected in text, expected
