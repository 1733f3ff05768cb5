"""The ``offpath`` command line.

    offpath query "kubernetes"          ask QueryService; the answer and its event id
    offpath event EVENT_ID [--wait 5]   one stored event
    offpath events [--since 1h]         recent events
    offpath summary [--since 24h]       totals over a time range
    offpath report [--png FILE]         the same as bar charts (and a PNG)
    offpath load --rate R --duration D  open-loop load on QueryService [--ids FILE]
    offpath reconcile FILE              which of those event ids were stored
    offpath dlq list | show | redrive   the dead-letter queue (AWS, not gRPC)

Every command takes ``--output table|json`` and the targets and deadline,
before or after its name; see :mod:`offpath.client.cli.app` for the grammar
and the exit codes. A new command is a module with a ``register(root)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from offpath.client.cli import dlq, loadgen, report, rpc
from offpath.client.cli.app import EXIT_CODES_HELP, Root, global_options, run_main


@click.group(cls=Root, epilog=EXIT_CODES_HELP, context_settings={"max_content_width": 100})
@click.version_option(package_name="offpath", prog_name="offpath")
@global_options
def offpath() -> None:
    """Query offpath and read its analytics.

    Targets, TLS, deadline and retries come from the same OFFPATH_* settings
    as the Python client (OFFPATH_QUERY_TARGET, OFFPATH_CLIENT_TLS, ...);
    the options below override them for one run, given before or after the
    command's name.
    """


rpc.register(offpath)
report.register(offpath)
loadgen.register(offpath)
dlq.register(offpath)


def main(argv: Sequence[str] | None = None) -> None:
    run_main(offpath, argv)


__all__ = ["main", "offpath"]
