"""``offpath report``: one GetSummary call drawn as bar charts for the terminal
and, with ``--png FILE``, as a PNG (matplotlib, the ``report`` extra)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from offpath.client import report as render
from offpath.client.cli.app import (
    EXIT_INVALID,
    CommandError,
    Report,
    Session,
    command,
    since_option,
)
from offpath.client.cli.rpc import MAX_RANGE, summary_document


@since_option("24h", MAX_RANGE)
@click.option(
    "--png",
    "png_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    metavar="FILE",
    help=(
        "also draw the report into FILE: volume and processing time per bucket, "
        f"top skills and queries (needs matplotlib: {render.INSTALL_HINT})"
    ),
)
def report(session: Session, since: timedelta, png_path: Path | None) -> None:
    """A report of a recent time range from one GetSummary call: events and
    errors per bucket, processing time percentiles (whole range and per
    bucket), top skills, top queries, errors by status code and tokens by
    model, as bar charts 80 columns wide. --output json prints the summary
    document (as `offpath summary --output json`).

    \b
    Examples:
      offpath report
      offpath report --since 7d --png report.png
    """
    # Before the call: a missing extra is an installation problem, said at once.
    if png_path is not None and not _has_matplotlib():
        raise CommandError(
            f"offpath report --png needs matplotlib, which is not installed: {render.INSTALL_HINT}",
            EXIT_INVALID,
        )
    now = datetime.now(UTC)
    summary = session.client("ingest").summary(start=now - since, end=now)
    asked = f"last {render.duration_text(since)}"
    footer: list[str] = []
    if png_path is not None:
        try:
            render.write_png(summary, png_path, asked=asked)
        except render.MissingExtra as exc:
            raise CommandError(str(exc), EXIT_INVALID) from None
        except OSError as exc:
            raise CommandError(f"cannot write {png_path}: {exc.strerror or exc}") from None
        footer = ["", f"chart written to {png_path}"]
    session.emit(
        Report(
            document=summary_document(summary),
            lines=render.text_report(summary, asked=asked),
            footer=footer,
        )
    )


def _has_matplotlib() -> bool:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def register(root: click.Group) -> None:
    command(root)(report)
