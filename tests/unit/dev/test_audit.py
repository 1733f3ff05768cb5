"""offpath.dev.audit: reading the lock and the acceptance file, matching
PyPI's advisories to pins, the fallback from pip-audit, and the verdict.

No network: PyPI answers are recorded project JSON (tests/unit/dev/pypi/,
trimmed to the fields the audit reads: info.version, the release names and
vulnerabilities, 2026-11-27) served by a fake fetch.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from offpath.dev import audit
from offpath.dev.audit import (
    Acceptance,
    AuditError,
    Coverage,
    Pin,
    PinResult,
    Vuln,
    check_project_json,
    judge,
    parse_acceptances,
    parse_lock,
    pin_has_fix,
    render,
    results_from_pip_audit,
)

RECORDED = Path(__file__).parent / "pypi"
REPO = Path(__file__).parents[3]
TODAY = dt.date(2026, 11, 27)
ECDSA_IDS = {"PYSEC-2026-1325", "GHSA-wj6h-64fc-37mp"}


def recorded(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return doc


class FakePypi:
    """Serves recorded project JSON by URL; per-version URLs answer 404
    unless ``per_version`` holds them, as the registry here does."""

    def __init__(self, projects: Mapping[str, Mapping[str, Any]]) -> None:
        self.projects = dict(projects)
        self.per_version: dict[str, Mapping[str, Any]] = {}
        self.failing: set[str] = set()
        self.urls: list[str] = []

    def __call__(self, url: str) -> Mapping[str, Any] | None:
        self.urls.append(url)
        parts = url.removeprefix(audit.PYPI + "/").split("/")
        if parts[0] in self.failing:
            raise OSError(f"timed out: {url}")
        if len(parts) == 3:
            return self.per_version.get(f"{parts[0]}/{parts[1]}")
        return self.projects.get(parts[0])


def acceptance(package: str, id: str, expires: dt.date = dt.date(2027, 1, 31)) -> Acceptance:
    return Acceptance(package=package, id=id, reason="not reachable from our code", expires=expires)


# -- inputs -------------------------------------------------------------------


def test_parse_lock_reads_pins_canonically_and_skips_comments_and_options() -> None:
    """Names are canonicalised (PEP 503); comments, blanks and pip options
    are not pins."""
    text = "# header\n\n--find-links /x\nPyYAML==6.0.2\nzope.interface==7.0  # why\n"
    assert parse_lock(text) == [Pin("pyyaml", "6.0.2"), Pin("zope-interface", "7.0")]


@pytest.mark.parametrize("line", ["requests>=2", "requests", "==1.0", "requests=="])
def test_parse_lock_rejects_what_is_not_pinned_exactly(line: str) -> None:
    """A requirement that is not name==version cannot be audited: an error."""
    with pytest.raises(AuditError, match="line 1"):
        parse_lock(line)


def test_the_real_lock_pins_every_line() -> None:
    """requirements.lock parses, so make audit sees every dependency."""
    text = (REPO / "requirements.lock").read_text()
    pins = parse_lock(text)
    assert len(pins) == sum(1 for line in text.splitlines() if "==" in line)
    assert Pin("pip-audit", next(p.version for p in pins if p.name == "pip-audit")) in pins


def test_parse_acceptances_reads_entries() -> None:
    """An entry has package (canonicalised), id, reason and a TOML date."""
    text = (
        '[[accept]]\npackage = "Ecdsa"\nid = "CVE-2024-23342"\n'
        'reason = "we never sign with ecdsa"\nexpires = 2027-01-31\n'
    )
    assert parse_acceptances(text) == [
        Acceptance("ecdsa", "CVE-2024-23342", "we never sign with ecdsa", dt.date(2027, 1, 31))
    ]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('package = "a"\nid = "X"\nexpires = 2027-01-31\n', "reason"),
        ('package = "a"\nid = "X"\nreason = " "\nexpires = 2027-01-31\n', "reason"),
        ('package = "a"\nid = "X"\nreason = "r"\nexpires = "2027-01-31"\n', "expires"),
        ('package = "a"\nid = "X"\nreason = "r"\nexpires = 2027-01-31T00:00:00\n', "expires"),
        ('package = "a"\nid = "X"\nreason = "r"\n', "expires"),
        ('id = "X"\nreason = "r"\nexpires = 2027-01-31\n', "package"),
        ('package = "a"\nid = "X"\nreason = "r"\nexpires = 2027-01-31\nuntil = 1\n', "until"),
    ],
)
def test_parse_acceptances_rejects_incomplete_entries(body: str, error: str) -> None:
    """Every entry needs a reason and a real expiry date; typos are errors,
    not silently ignored keys."""
    with pytest.raises(AuditError, match=error):
        parse_acceptances("[[accept]]\n" + body)


def test_parse_acceptances_rejects_bad_toml_and_unknown_tables() -> None:
    """A broken or misspelt file is an error, not an empty list."""
    with pytest.raises(AuditError):
        parse_acceptances("[[accept]\n")
    with pytest.raises(AuditError, match="accepted"):
        parse_acceptances('[[accepted]]\npackage = "a"\n')


def test_the_committed_acceptance_file_is_valid() -> None:
    """tools/audit-accepted.toml parses (whether an entry has expired is
    make audit's to say: make test does not depend on the date)."""
    parse_acceptances((REPO / audit.DEFAULT_ACCEPTED).read_text())


# -- matching -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "fixed_in", "has_fix"),
    [
        ("1.0", [], False),
        ("1.3.0", ["1.2.5", "1.3.1"], False),
        ("1.2.4", ["1.2.5", "1.3.1"], False),
        ("1.2.6", ["1.2.5", "1.3.1"], True),
        ("1.3.1", ["1.2.5", "1.3.1"], True),
        ("2.0", ["1.2.5", "1.3.1"], True),
        ("1.1.0", ["1.2.5", "1.3.1"], False),
        ("1.0", ["not a version"], False),
    ],
)
def test_pin_has_fix(pin: str, fixed_in: list[str], has_fix: bool) -> None:
    """Fixed at or above every fix, or above a fix of its own major.minor
    series; no fix at or below the pin counts as affected."""
    assert pin_has_fix(Version(pin), fixed_in) is has_fix


def test_pin_equal_to_latest_is_fully_checked_and_every_listed_advisory_is_a_finding() -> None:
    """PyPI lists the latest release's advisories: for that pin all apply."""
    result = check_project_json(Pin("ecdsa", "0.19.2"), recorded("ecdsa"))
    assert result.coverage is Coverage.FULL
    assert {v.id for v in result.vulns} == ECDSA_IDS
    assert all("CVE-2024-23342" in v.aliases for v in result.vulns)


def test_older_pin_is_partly_checked_and_unfixed_latest_advisories_still_count() -> None:
    """An advisory without a fix affects the latest release and, as far as
    this API can tell, the older pin too; the pin is only partly checked."""
    result = check_project_json(Pin("ecdsa", "0.18.0"), recorded("ecdsa"))
    assert result.coverage is Coverage.PARTIAL
    assert "older than the latest release 0.19.2" in result.detail
    assert {v.id for v in result.vulns} == ECDSA_IDS
    assert all("0.19.2" in v.note for v in result.vulns)


def test_older_pin_with_no_listed_advisory_is_partial_not_clean() -> None:
    """No advisory listed for the latest release says nothing about ones
    fixed since the pin: partial coverage, no findings."""
    result = check_project_json(Pin("mpmath", "1.3.0"), recorded("mpmath"))
    assert (result.coverage, result.vulns) == (Coverage.PARTIAL, ())


def test_listed_fix_at_or_below_the_pin_is_not_a_finding() -> None:
    """fixed_in decides for an older pin; withdrawn advisories never count."""
    doc = copy.deepcopy(recorded("pycrypto"))
    first, second, third, *_ = doc["vulnerabilities"]
    first["fixed_in"] = ["2.6"]
    second["fixed_in"] = ["2.6.1"]
    third["withdrawn"] = "2025-01-01T00:00:00Z"
    result = check_project_json(Pin("pycrypto", "2.6"), doc)
    ids = {v.id for v in result.vulns}
    assert first["id"] not in ids
    assert second["id"] in ids
    assert third["id"] not in ids
    assert len(ids) == len(doc["vulnerabilities"]) - 2


def test_unknown_project_and_unpublished_version_are_unchecked() -> None:
    """Not on PyPI, or a version PyPI never published: unchecked, never clean."""
    assert check_project_json(Pin("nope", "1.0"), None).coverage is Coverage.UNCHECKED
    result = check_project_json(Pin("ecdsa", "0.99"), recorded("ecdsa"))
    assert result.coverage is Coverage.UNCHECKED
    assert "not published" in result.detail


def test_pip_audit_report_gives_full_results_and_leaves_skipped_pins_out() -> None:
    """Audited dependencies are fully checked with their advisories; a
    skipped one is left for the fallback (pip-audit itself calls it clean)."""
    pins = [Pin("jinja2", "3.1.4"), Pin("ecdsa", "0.19.2")]
    report = {
        "dependencies": [
            {
                "name": "Jinja2",
                "version": "3.1.4",
                "vulns": [
                    {
                        "id": "GHSA-q2x7-8rv6-6q7h",
                        "fix_versions": ["3.1.5"],
                        "aliases": ["CVE-2024-56201"],
                        "description": "sandbox\nbreakout",
                    }
                ],
            },
            {"name": "ecdsa", "skip_reason": "Dependency not found on PyPI"},
        ],
        "fixes": [],
    }
    results = results_from_pip_audit(report, pins)
    assert list(results) == [pins[0]]
    (vuln,) = results[pins[0]].vulns
    assert (vuln.id, vuln.aliases, vuln.fixed_in) == (
        "GHSA-q2x7-8rv6-6q7h",
        ("CVE-2024-56201",),
        ("3.1.5",),
    )
    assert vuln.summary == "sandbox breakout"


# -- verdict ------------------------------------------------------------------


def ecdsa_result() -> PinResult:
    return check_project_json(Pin("ecdsa", "0.19.2"), recorded("ecdsa"))


def test_acceptance_by_alias_covers_every_record_of_that_advisory() -> None:
    """One acceptance naming the CVE covers both the PYSEC and GHSA records."""
    verdict = judge([ecdsa_result()], [acceptance("ecdsa", "CVE-2024-23342")], TODAY)
    assert verdict.passed
    assert len(verdict.findings) == 2
    assert not verdict.unaccepted
    assert not verdict.unused


def test_acceptance_of_another_package_does_not_cover() -> None:
    """Acceptances are per package: the same id elsewhere does not count."""
    verdict = judge([ecdsa_result()], [acceptance("pycrypto", "CVE-2024-23342")], TODAY)
    assert not verdict.passed
    assert len(verdict.unaccepted) == 2
    assert [a.package for a in verdict.unused] == ["pycrypto"]


def test_expired_acceptance_fails_and_no_longer_covers() -> None:
    """The day after its expiry an acceptance fails the audit; on the day it
    still holds."""
    entry = acceptance("ecdsa", "CVE-2024-23342", expires=TODAY)
    assert judge([ecdsa_result()], [entry], TODAY).passed
    verdict = judge([ecdsa_result()], [entry], TODAY + dt.timedelta(days=1))
    assert not verdict.passed
    assert verdict.expired == [entry]
    assert len(verdict.unaccepted) == 2
    assert "expired acceptance: ecdsa CVE-2024-23342" in render(verdict, [])


def test_expired_acceptance_fails_even_without_a_finding() -> None:
    """An expired entry is re-examined even if its finding is gone."""
    verdict = judge([], [acceptance("x", "Y", expires=TODAY - dt.timedelta(days=1))], TODAY)
    assert not verdict.passed


def test_unchecked_pin_fails_and_partial_pins_pass_with_a_caveat() -> None:
    """An unchecked pin fails the audit; partly checked ones pass, counted."""
    partial = check_project_json(Pin("mpmath", "1.3.0"), recorded("mpmath"))
    unchecked = PinResult(Pin("x", "1"), Coverage.UNCHECKED, detail="timed out")
    passing = judge([partial], [], TODAY)
    assert passing.passed
    text = render(passing, [])
    assert "partly checked: 1" in text
    assert "mpmath==1.3.0: pin older than the latest release 1.4.1" in text
    assert "result: PASS (no unaccepted finding, but 1 of 1 pins only partly checked)" in text
    failing = judge([partial, unchecked], [], TODAY)
    assert not failing.passed
    assert "result: FAIL (1 pins unchecked)" in render(failing, [])


# -- sources ------------------------------------------------------------------


PINS = [Pin("ecdsa", "0.19.2"), Pin("mpmath", "1.3.0"), Pin("pycrypto", "2.6.1")]


def fake_pypi() -> FakePypi:
    return FakePypi({name: recorded(name) for name in ("ecdsa", "mpmath", "pycrypto")})


def test_without_the_per_version_api_pip_audit_is_not_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Per-version JSON answering 404 (as here): pip-audit is not run (it
    would skip everything and report no vulnerabilities); every pin goes
    through the project JSON."""

    def no_pip_audit(lock: Path, timeout: float) -> tuple[None, str]:
        raise AssertionError("pip-audit run without the per-version API")

    monkeypatch.setattr(audit, "run_pip_audit", no_pip_audit)
    results, notes = audit.audit(PINS, tmp_path / "lock", fake_pypi(), "auto", 1.0, 4)
    assert [r.pin for r in results] == PINS
    assert [r.coverage for r in results] == [Coverage.FULL, Coverage.PARTIAL, Coverage.FULL]
    assert "answered 404" in notes[0]
    assert notes[1] == "PyPI project JSON used for 3 pins"


def test_with_the_per_version_api_pip_audit_is_used_and_its_skips_fall_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Per-version JSON served: pip-audit's results stand; a pin it skipped
    is checked through the project JSON."""
    fetch = fake_pypi()
    fetch.per_version["ecdsa/0.19.2"] = {"vulnerabilities": []}
    report = {
        "dependencies": [
            {"name": "ecdsa", "version": "0.19.2", "vulns": []},
            {"name": "mpmath", "version": "1.3.0", "vulns": []},
            {"name": "pycrypto", "skip_reason": "Dependency not found on PyPI"},
        ]
    }
    monkeypatch.setattr(audit, "run_pip_audit", lambda lock, timeout: (report, "pip-audit"))
    results, notes = audit.audit(PINS, tmp_path / "lock", fetch, "auto", 1.0, 4)
    assert [(r.source, r.coverage) for r in results] == [
        ("pip-audit", Coverage.FULL),
        ("pip-audit", Coverage.FULL),
        ("PyPI project JSON", Coverage.FULL),
    ]
    assert len(results[2].vulns) == 4
    assert notes == [
        "pip-audit (per-version PyPI JSON) audited 2 pins",
        "PyPI project JSON used for 1 pins",
    ]


def test_network_errors_leave_pins_unchecked(tmp_path: Path) -> None:
    """A fetch that fails is an unchecked pin with the error, never clean."""
    fetch = fake_pypi()
    fetch.failing.add("mpmath")
    results, _ = audit.audit(PINS, tmp_path / "lock", fetch, "project-json", 1.0, 4)
    assert results[1].coverage is Coverage.UNCHECKED
    assert "timed out" in results[1].detail
    assert not judge(results, [], TODAY).passed


def _write(tmp_path: Path, lock: str, accepted: str) -> list[str]:
    (tmp_path / "lock").write_text(lock)
    (tmp_path / "accepted.toml").write_text(accepted)
    return ["--lock", str(tmp_path / "lock"), "--accepted", str(tmp_path / "accepted.toml")]


def test_main_fails_on_a_finding_and_passes_once_it_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's exit status and report, end to end over a fake PyPI."""
    fetch = fake_pypi()
    monkeypatch.setattr(audit, "http_json", lambda url, timeout: fetch(url))
    args = _write(tmp_path, "ecdsa==0.19.2\nmpmath==1.3.0\n", "")
    assert audit.main([*args, "--source", "project-json"]) == 1
    out = capsys.readouterr().out
    assert "ecdsa==0.19.2 GHSA-wj6h-64fc-37mp (CVE-2024-23342, PYSEC-2026-1325)" in out
    assert "result: FAIL (2 unaccepted findings)" in out

    accepted = (
        '[[accept]]\npackage = "ecdsa"\nid = "CVE-2024-23342"\n'
        'reason = "no signing with ecdsa"\nexpires = 2999-01-01\n'
    )
    args = _write(tmp_path, "ecdsa==0.19.2\nmpmath==1.3.0\n", accepted)
    assert audit.main([*args, "--source", "project-json"]) == 0
    out = capsys.readouterr().out
    assert "accepted until 2999-01-01: no signing with ecdsa" in out
    assert "1 of 2 pins only partly checked" in out
    assert audit.main([*args, "--source", "project-json", "--require-full"]) == 1


def test_main_reports_a_bad_acceptance_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken acceptance file stops the audit with a clear message."""
    args = _write(tmp_path, "ecdsa==0.19.2\n", '[[accept]]\npackage = "ecdsa"\n')
    assert audit.main(args) == 1
    assert "must be a non-empty string" in capsys.readouterr().err


def test_vuln_ids_include_aliases() -> None:
    """Acceptances match on the id or any alias."""
    assert Vuln("A", ("B", "C"), (), "").ids == {"A", "B", "C"}
