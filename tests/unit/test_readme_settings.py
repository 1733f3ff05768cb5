"""The README's settings table is the one place users look: it must list
every OFFPATH_* variable the code reads, and nothing the code does not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("services", "clients", "tools")
VARIABLE = re.compile(r"\"(OFFPATH_[A-Z0-9_]+)\"")
TABLE_ROW = re.compile(r"^\| `(OFFPATH_[A-Z0-9_]+)` \|", re.MULTILINE)


def _code_variables() -> set[str]:
    found: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            found.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def test_readme_table_lists_exactly_the_variables_the_code_reads() -> None:
    """Every OFFPATH_* string in the code has a README row, and every row a use."""
    documented = set(TABLE_ROW.findall((ROOT / "README.md").read_text(encoding="utf-8")))
    in_code = _code_variables()
    assert in_code, "no settings found: the scan is broken"
    assert sorted(in_code - documented) == [], "undocumented settings"
    assert sorted(documented - in_code) == [], "documented settings nothing reads"
