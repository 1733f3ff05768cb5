"""`offpath load` and `offpath reconcile` against the scripted services, and
the pieces reconcile is made of: reading ids, their UUIDv7 times, ranges."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from click.testing import CliRunner, Result

from offpath.client.cli import offpath
from offpath.client.reconcile import Reconciliation, id_time, read_ids, time_ranges

from .conftest import STORED_ID, FakeServer

# A UUIDv7 the fake ingest does not have (version nibble 7, variant 10).
ABSENT_ID = "0198c1f0-0000-7000-8000-0000000000ff"


def _run(*args: str) -> Result:
    return CliRunner().invoke(offpath, list(args))


class TestIds:
    def test_read_ids_skips_blanks_and_comments_and_sets_apart_non_uuids(self) -> None:
        """Blank lines and # comments are skipped, ids come back lower case in
        file order (repeats kept), and a line that is no UUID is set apart."""
        ids = read_ids(["# a load\n", "\n", STORED_ID.upper() + "\n", "nope\n", STORED_ID])
        assert ids.ids == [STORED_ID, STORED_ID]
        assert ids.invalid == ["nope"]

    def test_uuid7_carries_its_time_and_other_uuids_do_not(self) -> None:
        """A UUIDv7's first 48 bits are its Unix milliseconds; a UUIDv4 has no time."""
        moment = datetime(2026, 11, 27, 12, 0, 0, 123_000, tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
        v7 = uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62))
        assert id_time(str(v7)) == moment
        assert id_time(str(uuid.uuid4())) is None

    def test_times_close_together_make_one_range(self) -> None:
        """Times within a minute of each other share one range (with a margin
        either side); a time an hour later gets its own."""
        start = datetime(2026, 11, 27, tzinfo=UTC)
        times = [start, start + timedelta(seconds=30), start + timedelta(hours=1)]
        ranges = time_ranges(times)
        assert len(ranges) == 2
        assert ranges[0][0] < start < start + timedelta(seconds=30) < ranges[0][1]
        assert ranges[1][0] < times[2] < ranges[1][1]

    def test_percent_never_rounds_up_to_100(self) -> None:
        """One missing id in 100,000 reads 99.99 %, not 100 %."""
        result = Reconciliation(ids=100_000, distinct=100_000, delivered=99_999)
        assert result.delivered_percent == 99.99


class TestReconcileCommand:
    def test_missing_id_exits_3_with_the_counts(self, fake: FakeServer, tmp_path: Path) -> None:
        """A file with a stored id twice and an absent one: 50 % delivered, the
        absent id missing, the stored one repeated, exit 3."""
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{STORED_ID}\n{STORED_ID}\n{ABSENT_ID}\n")
        result = _run("reconcile", str(ids), "--ingest-target", fake.target, "-o", "json")
        assert result.exit_code == 3, result.output
        document = json.loads(result.stdout)
        assert document["deliveredPercent"] == 50.0
        assert document["missing"] == [ABSENT_ID]
        assert document["repeatedInFile"] == {STORED_ID: 2}
        assert document["listedTwice"] == []
        assert "1 of 2 event(s) missing" in result.stderr

    def test_all_delivered_exits_0_from_one_listing(self, fake: FakeServer, tmp_path: Path) -> None:
        """Every id found by ListEvents: 100.00 % delivered, no GetEvent call, exit 0."""
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{STORED_ID}\n")
        result = _run("reconcile", str(ids), "--ingest-target", fake.target)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("100.00 % delivered (1 of 1 distinct ids)")
        assert fake.script.calls["GetEvent"] == 0
        assert fake.script.calls["ListEvents"] >= 1

    def test_a_listing_past_its_deadline_falls_back_to_get_event(
        self, fake: FakeServer, tmp_path: Path
    ) -> None:
        """ListEvents answering DEADLINE_EXCEEDED (a slow store) does not fail the
        command: the ids are asked for one by one, and the report says so."""
        fake.script.fail["ListEvents"] = grpc.StatusCode.DEADLINE_EXCEEDED
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{STORED_ID}\n")
        result = _run("reconcile", str(ids), "--ingest-target", fake.target, "-o", "json")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["deliveredPercent"] == 100.0
        assert document["listingCutShort"] is True
        assert fake.script.calls["GetEvent"] == 1

    def test_a_line_that_is_no_uuid_exits_2(self, fake: FakeServer, tmp_path: Path) -> None:
        """Nothing missing but a line that is no UUID: reported, exit 2."""
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{STORED_ID}\nnot-an-id\n")
        result = _run("reconcile", str(ids), "--ingest-target", fake.target, "-o", "json")
        assert result.exit_code == 2, result.output
        assert json.loads(result.stdout)["notUuids"] == ["not-an-id"]


class TestLoadCommand:
    def test_load_writes_the_event_ids_and_a_latency_summary(
        self, fake: FakeServer, tmp_path: Path
    ) -> None:
        """10 queries (50/s for 0.2 s) go to QueryService; their 10 event ids
        are written one a line and the summary has percentiles and no failures."""
        ids = tmp_path / "ids.txt"
        result = _run(
            "load",
            "--rate",
            "50",
            "--duration",
            "200ms",
            "--ids",
            str(ids),
            "--query-target",
            fake.target,
            "-o",
            "json",
        )
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert (document["sent"], document["answered"], document["failed"]) == (10, 10, {})
        assert set(document["latencyMs"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert ids.read_text().splitlines() == [STORED_ID] * 10
        assert fake.script.calls["Query"] == 10

    def test_progress_goes_to_stderr_only(self, fake: FakeServer) -> None:
        """--progress draws its line on stderr; stdout stays the report."""
        result = _run(
            "load", "--rate", "20", "--duration", "0.5", "--progress", "--query-target", fake.target
        )
        assert result.exit_code == 0, result.output
        assert "sent " in result.stderr
        assert "sent " not in result.stdout
        assert result.stdout.startswith("10 queries at 20/s")

    def test_failures_exit_by_their_status(self, fake: FakeServer) -> None:
        """Queries answered INVALID_ARGUMENT: reported, exit 2 (that status's code)."""
        fake.script.fail["Query"] = grpc.StatusCode.INVALID_ARGUMENT
        result = _run("load", "--rate", "20", "--duration", "0.25", "--query-target", fake.target)
        assert result.exit_code == 2, result.output
        assert "INVALID_ARGUMENT 5" in result.stdout

    def test_unreachable_target_exits_4(self, closed_target: str) -> None:
        """Nothing listening: exit 4 within the deadline, naming the target."""
        result = _run(
            "load", "--duration", "1s", "--query-target", closed_target, "--timeout", "0.5"
        )
        assert result.exit_code == 4, result.output
        assert closed_target in result.stderr

    def test_too_many_queries_is_a_usage_error(self) -> None:
        """rate x duration above the cap is refused before any call (exit 2)."""
        result = _run("load", "--rate", "5000", "--duration", "1h")
        assert result.exit_code == 2
        assert "above" in result.output
