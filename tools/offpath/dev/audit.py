"""Dependency vulnerability audit of requirements.lock (``make audit``,
``python -m offpath.dev.audit [--lock FILE] [--accepted FILE]``).

Two sources, the better one first:

1. **pip-audit** (PyPI's per-version JSON, ``/pypi/<name>/<version>/json``,
   which lists the advisories affecting that exact version). Used when a probe
   of that endpoint answers; any pin pip-audit skips falls through to 2.
2. **PyPI's project JSON** (``/pypi/<name>/json``), when the per-version
   endpoint is not served (some registry mirrors answer it 404; pip-audit then
   skips every package and still prints "No known vulnerabilities found").
   Its ``vulnerabilities`` list describes the *latest* release only, so:
   a pin equal to the latest release is fully checked (every listed advisory
   applies); an older pin is only *partly* checked: an advisory listed for the
   latest release is a finding unless its ``fixed_in`` shows the pin already
   has the fix, but advisories fixed between the pin and the latest release
   are not visible through this API at all. The report counts those pins
   apart and never calls them clean.

A pin neither source can check (not on PyPI, network error) is *unchecked*
and fails the audit, as does any finding not accepted.

Accepting a finding: an entry in ``tools/audit-accepted.toml`` with the
package, the advisory id (or any of its aliases), a reason and an expiry date;
an expired entry fails the audit, so an acceptance is re-examined, not
forgotten. An entry that matches nothing is reported as removable.

Exit status: 0 passed (possibly with partly checked pins, stated), 1 failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PYPI: Final = "https://pypi.org/pypi"
DEFAULT_LOCK: Final = Path("requirements.lock")
DEFAULT_ACCEPTED: Final = Path("tools/audit-accepted.toml")
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_WORKERS: Final = 16

# A JSON document fetched over HTTP, or None for 404; raises OSError otherwise.
Fetch = Callable[[str], Mapping[str, Any] | None]


class AuditError(Exception):
    """A problem with the audit's own inputs (lock or acceptance file)."""


class Coverage(Enum):
    FULL = "fully checked"
    PARTIAL = "partly checked"
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: str


@dataclass(frozen=True)
class Vuln:
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]
    summary: str
    note: str = ""

    @property
    def ids(self) -> frozenset[str]:
        return frozenset((self.id, *self.aliases))


@dataclass(frozen=True)
class PinResult:
    pin: Pin
    coverage: Coverage
    vulns: tuple[Vuln, ...] = ()
    source: str = ""
    detail: str = ""  # why partial or unchecked


@dataclass(frozen=True)
class Acceptance:
    package: str  # canonical
    id: str
    reason: str
    expires: dt.date


@dataclass(frozen=True)
class Finding:
    pin: Pin
    vuln: Vuln
    accepted_by: Acceptance | None


@dataclass
class Verdict:
    results: list[PinResult]
    findings: list[Finding] = field(default_factory=list)
    expired: list[Acceptance] = field(default_factory=list)
    unused: list[Acceptance] = field(default_factory=list)

    def by_coverage(self, coverage: Coverage) -> list[PinResult]:
        return [r for r in self.results if r.coverage is coverage]

    @property
    def unaccepted(self) -> list[Finding]:
        return [f for f in self.findings if f.accepted_by is None]

    @property
    def passed(self) -> bool:
        return not (self.unaccepted or self.expired or self.by_coverage(Coverage.UNCHECKED))


# -- inputs -------------------------------------------------------------------


def parse_lock(text: str) -> list[Pin]:
    """``name==version`` lines of a pip freeze style lock (comments, blank
    lines and options skipped); anything else pinned loosely is an error, as
    an unpinned requirement cannot be audited."""
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise AuditError(f"lock line {number}: {raw.strip()!r} is not name==version")
        pins.append(Pin(canonicalize_name(name.split("[", 1)[0].strip()), version.strip()))
    return pins


def parse_acceptances(text: str, source: str = "acceptance file") -> list[Acceptance]:
    """The ``[[accept]]`` tables of the acceptance file, each with package,
    id, a non-empty reason and an ``expires`` date."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{source}: {exc}") from exc
    unknown = set(doc) - {"accept"}
    if unknown:
        raise AuditError(f"{source}: unknown keys {sorted(unknown)} (only [[accept]] tables)")
    out: list[Acceptance] = []
    for n, entry in enumerate(doc.get("accept", []), 1):
        where = f"{source}: [[accept]] #{n}"
        if not isinstance(entry, dict):
            raise AuditError(f"{where}: not a table")
        extra = set(entry) - {"package", "id", "reason", "expires"}
        if extra:
            raise AuditError(f"{where}: unknown keys {sorted(extra)}")
        for key in ("package", "id", "reason"):
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise AuditError(f"{where}: {key} must be a non-empty string")
        expires = entry.get("expires")
        # A TOML date (expires = 2027-01-31), not a string: tomllib checks it.
        if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
            raise AuditError(f"{where}: expires must be a date, e.g. expires = 2027-01-31")
        out.append(
            Acceptance(
                package=canonicalize_name(entry["package"]),
                id=entry["id"].strip(),
                reason=entry["reason"].strip(),
                expires=expires,
            )
        )
    return out


# -- matching -----------------------------------------------------------------


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def pin_has_fix(pin: Version, fixed_in: Iterable[str]) -> bool:
    """Whether ``pin`` already carries the fix, by the advisory's fix versions
    alone (the introducing version is not known here, so without a fix at or
    below the pin it counts as affected).

    Fixed if the pin is at or above every fix, or at or above a fix of its own
    release series (major.minor): with fixes 1.2.5 and 1.3.1, 1.2.6 is fixed,
    1.3.0 is not.
    """
    fixes = [v for v in (_version(f) for f in fixed_in) if v is not None]
    if not fixes:
        return False
    if all(f <= pin for f in fixes):
        return True
    return any(f <= pin and f.release[:2] == pin.release[:2] for f in fixes)


def _vuln_from_pypi(entry: Mapping[str, Any], note: str = "") -> Vuln:
    summary = entry.get("summary") or entry.get("details") or ""
    return Vuln(
        id=str(entry["id"]),
        aliases=tuple(str(a) for a in entry.get("aliases") or ()),
        fixed_in=tuple(str(f) for f in entry.get("fixed_in") or ()),
        summary=" ".join(str(summary).split())[:160],
        note=note,
    )


def check_project_json(pin: Pin, doc: Mapping[str, Any] | None) -> PinResult:
    """One pin against PyPI's project JSON (None: the project is not on PyPI)."""
    source = "PyPI project JSON"
    if doc is None:
        return PinResult(pin, Coverage.UNCHECKED, source=source, detail="not found on PyPI")
    latest_text = str(doc.get("info", {}).get("version", ""))
    latest, pinned = _version(latest_text), _version(pin.version)
    if latest is None or pinned is None:
        return PinResult(
            pin,
            Coverage.UNCHECKED,
            source=source,
            detail=f"cannot compare versions (pin {pin.version!r}, latest {latest_text!r})",
        )
    releases = doc.get("releases")
    if isinstance(releases, Mapping) and not any(_version(r) == pinned for r in releases):
        return PinResult(
            pin, Coverage.UNCHECKED, source=source, detail="pinned version not published on PyPI"
        )
    vulns: list[Vuln] = []
    for entry in doc.get("vulnerabilities") or ():
        if entry.get("withdrawn"):
            continue
        if pinned == latest:
            vulns.append(_vuln_from_pypi(entry))
        elif not pin_has_fix(pinned, entry.get("fixed_in") or ()):
            note = (
                f"listed for the latest release {latest_text}; counted as affecting "
                f"{pin.version} as no listed fix is at or below it"
            )
            vulns.append(_vuln_from_pypi(entry, note))
    if pinned == latest:
        return PinResult(pin, Coverage.FULL, tuple(vulns), source)
    relation = "older than" if pinned < latest else "newer than"
    return PinResult(
        pin,
        Coverage.PARTIAL,
        tuple(vulns),
        source,
        detail=f"pin {relation} the latest release {latest_text}",
    )


def results_from_pip_audit(doc: Mapping[str, Any], pins: Sequence[Pin]) -> dict[Pin, PinResult]:
    """pip-audit's ``-f json`` report as results for the pins it audited;
    pins it skipped (or left out) are absent, for the fallback."""
    by_name = {p.name: p for p in pins}
    out: dict[Pin, PinResult] = {}
    for dep in doc.get("dependencies", ()):
        pin = by_name.get(canonicalize_name(str(dep.get("name", ""))))
        if pin is None or "skip_reason" in dep:
            continue
        if _version(str(dep.get("version", ""))) != _version(pin.version):
            continue
        vulns = tuple(
            Vuln(
                id=str(v["id"]),
                aliases=tuple(str(a) for a in v.get("aliases") or ()),
                fixed_in=tuple(str(f) for f in v.get("fix_versions") or ()),
                summary=" ".join(str(v.get("description") or "").split())[:160],
            )
            for v in dep.get("vulns", ())
        )
        out[pin] = PinResult(pin, Coverage.FULL, vulns, source="pip-audit")
    return out


def judge(
    results: Sequence[PinResult], acceptances: Sequence[Acceptance], today: dt.date
) -> Verdict:
    """Findings matched against acceptances: an acceptance covers a finding
    of its package whose id or aliases name it, until it expires."""
    verdict = Verdict(list(results))
    live = [a for a in acceptances if a.expires >= today]
    verdict.expired = [a for a in acceptances if a.expires < today]
    used: set[Acceptance] = set()
    for result in results:
        for vuln in result.vulns:
            match = next(
                (a for a in live if a.package == result.pin.name and a.id in vuln.ids), None
            )
            if match is not None:
                used.add(match)
            verdict.findings.append(Finding(result.pin, vuln, match))
    verdict.unused = [a for a in live if a not in used]
    return verdict


# -- network ------------------------------------------------------------------


def http_json(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> Mapping[str, Any] | None:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            doc = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise OSError(f"HTTP {exc.code} from {url}") from exc
    if not isinstance(doc, Mapping):
        raise OSError(f"{url}: not a JSON object")
    return doc


def check_all_project_json(
    pins: Sequence[Pin], fetch: Fetch, workers: int = DEFAULT_WORKERS
) -> list[PinResult]:
    """Every pin against its project JSON, fetched in parallel."""

    def one(pin: Pin) -> PinResult:
        try:
            doc = fetch(f"{PYPI}/{pin.name}/json")
        except (OSError, ValueError) as exc:
            return PinResult(pin, Coverage.UNCHECKED, source="PyPI project JSON", detail=str(exc))
        return check_project_json(pin, doc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, pins))


def per_version_api_answers(pin: Pin, fetch: Fetch) -> tuple[bool, str]:
    """Whether PyPI's per-version JSON (what pip-audit reads) is served here."""
    url = f"{PYPI}/{pin.name}/{pin.version}/json"
    try:
        doc = fetch(url)
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    if doc is None:
        return False, f"{url} answered 404"
    return True, url


def run_pip_audit(lock: Path, timeout: float) -> tuple[Mapping[str, Any] | None, str]:
    """pip-audit's JSON report for the lock, or None and why not."""
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(lock),
        "--no-deps",  # the lock is complete: nothing to resolve
        "--disable-pip",
        "--format",
        "json",
        "--aliases",
        "on",
        "--desc",
        "on",
        "--progress-spinner",
        "off",
        "--timeout",
        str(int(timeout)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip-audit did not run: {exc}"
    # 0: no vulnerability, 1: some found; anything else is pip-audit failing.
    if done.returncode not in (0, 1):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip-audit failed ({done.returncode}): {last}"
    try:
        doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None, "pip-audit printed no JSON report"
    return (doc, "pip-audit") if isinstance(doc, Mapping) else (None, "pip-audit: bad report")


def audit(
    pins: Sequence[Pin],
    lock: Path,
    fetch: Fetch,
    source: str,
    timeout: float,
    workers: int,
) -> tuple[list[PinResult], list[str]]:
    """Results for every pin (in lock order) and notes on the sources used."""
    notes: list[str] = []
    results: dict[Pin, PinResult] = {}
    if source in ("auto", "pip-audit") and pins:
        answers, where = per_version_api_answers(pins[0], fetch)
        if answers or source == "pip-audit":
            doc, why = run_pip_audit(lock, timeout)
            if doc is not None:
                results = results_from_pip_audit(doc, pins)
                notes.append(f"pip-audit (per-version PyPI JSON) audited {len(results)} pins")
            else:
                notes.append(why)
        else:
            notes.append(f"pip-audit cannot audit here: PyPI's per-version JSON {where}")
    rest = [p for p in pins if p not in results]
    if rest:
        notes.append(f"PyPI project JSON used for {len(rest)} pins")
        for result in check_all_project_json(rest, fetch, workers):
            results[result.pin] = result
    return [results[p] for p in pins], notes


# -- report -------------------------------------------------------------------


def render(verdict: Verdict, notes: Sequence[str], seconds: float | None = None) -> str:
    lines = [f"audit: {len(verdict.results)} pins" + (f" in {seconds:.1f} s" if seconds else "")]
    lines += [f"  source: {n}" for n in notes]
    full = verdict.by_coverage(Coverage.FULL)
    partial = verdict.by_coverage(Coverage.PARTIAL)
    unchecked = verdict.by_coverage(Coverage.UNCHECKED)
    lines.append(f"fully checked: {len(full)}")
    lines.append(
        f"partly checked: {len(partial)} (only advisories PyPI lists for the latest release "
        "were visible; ones fixed between the pin and the latest release were not)"
    )
    for r in partial:
        lines.append(f"  {r.pin.name}=={r.pin.version}: {r.detail}")
    lines.append(f"unchecked: {len(unchecked)}")
    for r in unchecked:
        lines.append(f"  {r.pin.name}=={r.pin.version}: {r.detail}")
    accepted = len(verdict.findings) - len(verdict.unaccepted)
    lines.append(f"findings: {len(verdict.findings)} ({accepted} accepted)")
    for f in verdict.findings:
        aliases = f" ({', '.join(f.vuln.aliases)})" if f.vuln.aliases else ""
        fixed = ", ".join(f.vuln.fixed_in) or "none"
        lines.append(f"  {f.pin.name}=={f.pin.version} {f.vuln.id}{aliases} fixed in: {fixed}")
        if f.vuln.summary:
            lines.append(f"    {f.vuln.summary}")
        if f.vuln.note:
            lines.append(f"    note: {f.vuln.note}")
        if f.accepted_by is not None:
            a = f.accepted_by
            lines.append(f"    accepted until {a.expires}: {a.reason}")
    for a in verdict.expired:
        lines.append(f"expired acceptance: {a.package} {a.id} (expired {a.expires}): review it")
    for a in verdict.unused:
        lines.append(f"unused acceptance: {a.package} {a.id} matches no finding; remove it")
    if verdict.passed:
        caveat = (
            f", but {len(partial)} of {len(verdict.results)} pins only partly checked"
            if partial
            else ""
        )
        lines.append(f"result: PASS (no unaccepted finding{caveat})")
    else:
        reasons = []
        if verdict.unaccepted:
            reasons.append(f"{len(verdict.unaccepted)} unaccepted findings")
        if verdict.expired:
            reasons.append(f"{len(verdict.expired)} expired acceptances")
        if unchecked:
            reasons.append(f"{len(unchecked)} pins unchecked")
        lines.append(f"result: FAIL ({', '.join(reasons)})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offpath.dev.audit", description=__doc__)
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    parser.add_argument("--accepted", type=Path, default=DEFAULT_ACCEPTED)
    parser.add_argument(
        "--source",
        choices=("auto", "pip-audit", "project-json"),
        default="auto",
        help="auto: pip-audit when PyPI's per-version JSON answers, else the project JSON",
    )
    parser.add_argument(
        "--require-full",
        action="store_true",
        help="fail when any pin is only partly checked (for machines with full PyPI access)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per request, s")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args(argv)
    try:
        pins = parse_lock(args.lock.read_text())
        acceptances = (
            parse_acceptances(args.accepted.read_text(), str(args.accepted))
            if args.accepted.exists()
            else []
        )
    except (OSError, AuditError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    if not pins:
        print(f"audit: {args.lock} pins nothing", file=sys.stderr)
        return 1
    start = time.monotonic()
    results, notes = audit(
        pins,
        args.lock,
        lambda url: http_json(url, args.timeout),
        args.source,
        args.timeout,
        args.workers,
    )
    verdict = judge(results, acceptances, dt.datetime.now(dt.UTC).date())
    print(render(verdict, notes, time.monotonic() - start))
    if args.require_full and verdict.by_coverage(Coverage.PARTIAL):
        print("audit: FAIL (--require-full and some pins only partly checked)")
        return 1
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
