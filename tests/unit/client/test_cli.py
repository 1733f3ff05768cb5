"""The `offpath` command line: one grammar for every command, output formats,
exit codes by status, help and version, targets from the client's settings."""

from __future__ import annotations

import json
from importlib.metadata import version

import click
import grpc
import pytest
from click.testing import CliRunner, Result

from offpath.client.cli import offpath
from offpath.client.cli.app import exit_code
from offpath.client.cli.rpc import MAX_RANGE, MAX_TOP_K
from offpath.ingest.store import MAX_RANGE_DAYS
from offpath.query.servicer import MAX_TOP_K as SERVER_MAX_TOP_K

from .conftest import STORED_ID, FakeServer


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(offpath, list(args), env=env)


def _leaf_commands(
    group: click.Group = offpath, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _leaf_commands(cmd, (*path, name))
        else:
            found.append((*path, name))
    return found


class TestGrammar:
    @pytest.mark.parametrize("where", ["before", "after"])
    def test_global_options_before_or_after_the_command(self, fake: FakeServer, where: str) -> None:
        """--query-target and --output json work on either side of the command's name."""
        options = ["--query-target", fake.target, "--output", "json"]
        args = [*options, "query", "k8s"] if where == "before" else ["query", "k8s", *options]
        result = _run(*args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["eventId"] == STORED_ID

    def test_the_later_value_wins(self, fake: FakeServer) -> None:
        """A global option given before and after the command: the later one counts."""
        result = _run("-o", "json", "--query-target", fake.target, "query", "k8s", "-o", "table")
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == "yes: k8s"

    @pytest.mark.parametrize("command", _leaf_commands())
    def test_every_command_takes_the_global_options(self, command: tuple[str, ...]) -> None:
        """Each command's --help lists --output table|json, the targets and --timeout,
        and the exit codes."""
        result = _run(*command, "--help")
        assert result.exit_code == 0, result.output
        for option in ("--output [table|json]", "--query-target", "--ingest-target", "--timeout"):
            assert option in result.stdout, (command, option)
        assert "Exit codes:" in result.stdout

    def test_targets_come_from_the_clients_settings(
        self, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OFFPATH_INGEST_TARGET, read by ClientSettings as for OffpathClient(), points
        the command at the server."""
        monkeypatch.setenv("OFFPATH_INGEST_TARGET", fake.target)
        result = _run("summary")
        assert result.exit_code == 0, result.output
        assert "3 events   1 errors" in result.stdout

    def test_a_bad_setting_exits_2_naming_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad OFFPATH_CLIENT_* value is invalid input: exit 2 with the variable's name."""
        monkeypatch.setenv("OFFPATH_CLIENT_MAX_ATTEMPTS", "9")
        result = _run("summary")
        assert result.exit_code == 2
        assert "OFFPATH_CLIENT_MAX_ATTEMPTS" in result.stderr


class TestOutput:
    def test_events_table_has_a_header_and_status_names(self, fake: FakeServer) -> None:
        """`events` prints a header row and OK / INVALID_ARGUMENT, not numbers."""
        result = _run("events", "--ingest-target", fake.target)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split()[:4] == ["OCCURRED_AT", "EVENT_ID", "STATUS", "MS"]
        assert lines[1].split()[2] == "OK"
        assert lines[2].split()[2] == "INVALID_ARGUMENT"
        assert lines[-1].startswith("3 event(s)")

    def test_events_json_is_one_document_with_stable_keys(self, fake: FakeServer) -> None:
        """--output json prints one document; fields at their default (statusCode 0)
        are present, and each event carries its status name."""
        result = _run("events", "--ingest-target", fake.target, "-o", "json")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        first, second, _ = document["events"]
        assert (first["statusCode"], first["status"]) == (0, "OK")
        assert (second["statusCode"], second["status"]) == (3, "INVALID_ARGUMENT")
        assert set(first) == set(second)

    @pytest.mark.parametrize(
        ("command", "key"),
        [
            (("query", "k8s"), "eventId"),
            (("event", STORED_ID), "event"),
            (("events",), "events"),
            (("summary",), "eventCount"),
        ],
    )
    def test_every_grpc_command_prints_json(
        self, fake: FakeServer, command: tuple[str, ...], key: str
    ) -> None:
        """query, event, events and summary each print one JSON document on request."""
        targets = ("--query-target", fake.target, "--ingest-target", fake.target)
        result = _run(*command, *targets, "--output", "json")
        assert result.exit_code == 0, result.output
        assert key in json.loads(result.stdout)

    def test_event_table_names_the_status(self, fake: FakeServer) -> None:
        """`event` in a table shows one field per line, the status by name."""
        result = _run("event", STORED_ID, "--ingest-target", fake.target)
        assert result.exit_code == 0, result.output
        fields = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
        assert fields["status"] == "OK"
        assert fields["event_id"] == STORED_ID


class TestExitCodes:
    def test_not_found_exits_3(self, fake: FakeServer) -> None:
        """NOT_FOUND from the server: exit 3, the status on stderr, no traceback."""
        result = _run("event", "nope", "--ingest-target", fake.target)
        assert result.exit_code == 3
        assert result.stderr.startswith("offpath: NOT_FOUND: no event nope")
        assert "Traceback" not in result.output

    def test_unavailable_exits_4_and_names_the_target(self, closed_target: str) -> None:
        """Nothing listening: exit 4, and the message says which address failed."""
        result = _run("query", "k8s", "--query-target", closed_target, "--timeout", "2")
        assert result.exit_code == 4
        assert f"UNAVAILABLE: cannot reach {closed_target}" in result.stderr

    def test_invalid_argument_exits_2(self, fake: FakeServer) -> None:
        """INVALID_ARGUMENT from the server is invalid input, like a usage error."""
        result = _run("query", "", "--query-target", fake.target)
        assert result.exit_code == 2
        assert result.stderr.startswith("offpath: INVALID_ARGUMENT: query must not be empty")

    def test_other_errors_exit_1(self, fake: FakeServer) -> None:
        """A status with no code of its own (INTERNAL) exits 1."""
        fake.script.fail["GetSummary"] = grpc.StatusCode.INTERNAL
        result = _run("summary", "--ingest-target", fake.target)
        assert result.exit_code == 1
        assert "INTERNAL" in result.stderr

    @pytest.mark.parametrize(
        "args",
        [
            ("query", "k8s", "--top-k", "0"),
            ("events", "--since", "40d"),
            ("events", "--since", "x"),
        ],
    )
    def test_out_of_range_options_exit_2_before_any_call(
        self, fake: FakeServer, args: tuple[str, ...]
    ) -> None:
        """Options outside their documented range are refused locally with exit 2."""
        result = _run(*args, "--query-target", fake.target, "--ingest-target", fake.target)
        assert result.exit_code == 2
        assert sum(fake.script.calls.values()) == 0

    def test_mapping_is_one_table(self) -> None:
        """DEADLINE_EXCEEDED counts as unavailable; an unmapped status as other."""
        assert exit_code(grpc.StatusCode.DEADLINE_EXCEEDED) == 4
        assert exit_code(grpc.StatusCode.PERMISSION_DENIED) == 1


class TestHelp:
    def test_version_is_the_distributions(self) -> None:
        """--version prints the installed offpath distribution's version."""
        result = _run("--version")
        assert result.exit_code == 0
        assert result.stdout.strip() == f"offpath, version {version('offpath')}"

    def test_help_shows_defaults_ranges_and_examples(self) -> None:
        """`events --help` shows each option's default and range, and examples."""
        text = _run("events", "--help").stdout
        assert "[default: 1h]" in text
        assert "1<=x<=10000" in text
        assert "Examples:" in text
        assert "OFFPATH_INGEST_TARGET" in text

    def test_limits_match_the_servers(self) -> None:
        """The CLI's --top-k and --since limits are the services' own."""
        assert MAX_TOP_K == SERVER_MAX_TOP_K
        assert MAX_RANGE.days == MAX_RANGE_DAYS

    def test_shell_completion_is_served(self) -> None:
        """_OFFPATH_COMPLETE=bash_source prints a bash completion script."""
        runner = CliRunner()
        result = runner.invoke(
            offpath, [], prog_name="offpath", env={"_OFFPATH_COMPLETE": "bash_source"}
        )
        assert result.exit_code == 0
        assert "_offpath_completion" in result.stdout
