"""Write the README's benchmark results from a bench.json:
``python -m offpath.bench.readme [bench.json] [--readme README.md]``
(``make bench-readme``). Without a path, the newest run in bench-results/.
Only what lies between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``
changes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from offpath.bench.report import readme_block, replace_block


def newest(results: Path) -> Path | None:
    runs = sorted(results.glob("*/bench.json"))
    return runs[-1] if runs else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="offpath-bench-readme", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("bench_json", type=Path, nargs="?", help="default: the newest run")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    path = args.bench_json or newest(args.results)
    if path is None:
        parser.error(f"no bench.json under {args.results}/; run make bench first")
    report = json.loads(path.read_text(encoding="utf-8"))
    profile = report.get("profile")
    source = {"full": "make bench", "quick": "make bench-quick"}.get(
        str(profile), f"python -m offpath.bench --profile {profile}"
    )
    try:
        text = replace_block(args.readme.read_text(encoding="utf-8"), readme_block(report, source))
    except ValueError as exc:
        parser.error(f"{args.readme}: {exc}")
    args.readme.write_text(text, encoding="utf-8")
    print(f"{args.readme}: results from {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
