"""The grammar every ``offpath`` command shares.

- Global options (targets, deadline, ``--output``) are accepted before or
  after the command's name: each command carries them too, and a value given
  later on the line wins. Unset, they come from :class:`ClientSettings`, so a
  command and ``OffpathClient()`` read the same ``OFFPATH_*`` variables.
- ``--output table`` (for people) or ``--output json`` (one JSON document on
  stdout, stable keys) on every command, through :meth:`Session.emit`.
- Errors print one line on stderr, never a traceback, and exit with a code
  from :func:`exit_code`: the one place a gRPC status becomes an exit code.

A new command is a function decorated with ``@command(group)`` taking the
:class:`Session`; it returns what to print, as a :class:`Report` (a table and
the JSON document) or raises :class:`CommandError`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar

import click
import grpc

from offpath.client.client import OffpathClient
from offpath.client.settings import (
    DEFAULT_INGEST_TARGET,
    DEFAULT_QUERY_TARGET,
    DEFAULT_TIMEOUT_S,
    ENV_CA_FILE,
    ENV_CERT_FILE,
    ENV_INGEST_TARGET,
    ENV_KEY_FILE,
    ENV_QUERY_TARGET,
    ENV_TIMEOUT_S,
    ENV_TLS,
    ENV_TLS_SERVER_NAME,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    ClientSettings,
    SettingsError,
    read_token_file,
)

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_INVALID: Final = 2  # also click's own code for a usage error
EXIT_NOT_FOUND: Final = 3
EXIT_UNAVAILABLE: Final = 4

_EXIT_BY_STATUS: Final = {
    grpc.StatusCode.OK: EXIT_OK,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INVALID,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}

EXIT_CODES_HELP: Final = """\b
Exit codes:
  0  done
  1  any other error (the server or AWS answered with one)
  2  invalid input: usage, a setting, or INVALID_ARGUMENT / OUT_OF_RANGE
  3  not found: NOT_FOUND, a queue or DLQ message that does not exist, or
     event ids `offpath reconcile` found missing
  4  unavailable: UNAVAILABLE or DEADLINE_EXCEEDED (after gRPC's retries)

\b
Shell completion (bash; zsh_source and fish_source likewise):
  eval "$(_OFFPATH_COMPLETE=bash_source offpath)"
"""

OUTPUTS: Final = ("table", "json")


def exit_code(status: grpc.StatusCode) -> int:
    """The exit code for a call that ended with ``status``."""
    return _EXIT_BY_STATUS.get(status, EXIT_ERROR)


class CommandError(Exception):
    """A failure to report on one line and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Report:
    """What a command prints: ``document`` for ``--output json``; for
    ``table``, ``lines`` of text and then ``rows`` under ``headers``."""

    document: dict[str, Any]
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[object]] = ()
    lines: Sequence[str] = ()
    footer: Sequence[str] = ()


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1]
        if len(row) > 1
        else row[0]
        for row in cells
    ]


@dataclass
class Options:
    """The global options as given on the command line (None: not given)."""

    query_target: str | None = None
    ingest_target: str | None = None
    timeout: float | None = None
    output: str | None = None
    tls: bool | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None
    token_file: str | None = None


@dataclass
class Session:
    """One invocation: the settings, the output format, the client."""

    options: Options = field(default_factory=Options)
    _settings: ClientSettings | None = None
    _client: OffpathClient | None = None
    # The address of the service being called, for an UNAVAILABLE message.
    calling: str | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.options.output or "table"

    @property
    def settings(self) -> ClientSettings:
        if self._settings is None:
            options = self.options
            # A TLS file or name on the command line means TLS, unless
            # --plaintext says otherwise (then the settings refuse the mix).
            tls = options.tls
            if tls is None and any(
                value is not None
                for value in (
                    options.ca_file,
                    options.cert_file,
                    options.key_file,
                    options.tls_server_name,
                )
            ):
                tls = True
            token = (
                None
                if options.token_file is None
                else read_token_file(options.token_file, "--token-file")
            )
            self._settings = ClientSettings.from_env().replace(
                query_target=options.query_target,
                ingest_target=options.ingest_target,
                timeout_s=options.timeout,
                tls=tls,
                ca_file=options.ca_file,
                cert_file=options.cert_file,
                key_file=options.key_file,
                tls_server_name=options.tls_server_name,
                token=token,
            )
        return self._settings

    def client(self, service: str) -> OffpathClient:
        """The client, noting which service (``query`` or ``ingest``) is called."""
        if self._client is None:
            self._client = OffpathClient(settings=self.settings)
            self.cleanups.append(self._client.close)
        self.calling = (
            self.settings.query_target if service == "query" else self.settings.ingest_target
        )
        return self._client

    def emit(self, report: Report) -> None:
        if self.output == "json":
            click.echo(json.dumps(report.document, indent=2, sort_keys=True))
            return
        for line in report.lines:
            click.echo(line)
        if report.headers:
            for line in render_table(report.headers, report.rows):
                click.echo(line)
        for line in report.footer:
            click.echo(line)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
    if value is not None and param.name is not None:
        setattr(ctx.find_root().ensure_object(Session).options, param.name, value)
    return value


def global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes, before or after its name."""
    decorators = [
        click.option(
            "--query-target",
            metavar="HOST:PORT",
            expose_value=False,
            callback=_remember,
            help=f"QueryService address [env {ENV_QUERY_TARGET}; default {DEFAULT_QUERY_TARGET}]",
        ),
        click.option(
            "--ingest-target",
            metavar="HOST:PORT",
            expose_value=False,
            callback=_remember,
            help=(
                f"AnalyticsIngest address "
                f"[env {ENV_INGEST_TARGET}; default {DEFAULT_INGEST_TARGET}]"
            ),
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(MIN_TIMEOUT_S, MAX_TIMEOUT_S),
            metavar="SECONDS",
            expose_value=False,
            callback=_remember,
            help=f"deadline of each call [env {ENV_TIMEOUT_S}; default {DEFAULT_TIMEOUT_S:g}]",
        ),
        click.option(
            "--tls/--plaintext",
            default=None,
            expose_value=False,
            callback=_remember,
            help=(
                f"TLS, verifying the server, or plaintext [env {ENV_TLS}; default plaintext; "
                "a TLS option below implies --tls]"
            ),
        ),
        click.option(
            "--ca-file",
            metavar="PEM",
            expose_value=False,
            callback=_remember,
            help=f"CA certificates to verify the server with [env {ENV_CA_FILE}]",
        ),
        click.option(
            "--cert-file",
            metavar="PEM",
            expose_value=False,
            callback=_remember,
            help=f"client certificate, for mutual TLS (with --key-file) [env {ENV_CERT_FILE}]",
        ),
        click.option(
            "--key-file",
            metavar="PEM",
            expose_value=False,
            callback=_remember,
            help=f"the client certificate's key [env {ENV_KEY_FILE}]",
        ),
        click.option(
            "--tls-server-name",
            metavar="NAME",
            expose_value=False,
            callback=_remember,
            help=(
                "name the server's certificate must carry, when the target's host is not it "
                f"(a tunnel, an IP) [env {ENV_TLS_SERVER_NAME}]"
            ),
        ),
        click.option(
            "--token-file",
            metavar="FILE",
            expose_value=False,
            callback=_remember,
            help=(
                "AnalyticsIngest's read token, first line of FILE; sent to AnalyticsIngest only "
                f"[env {ENV_TOKEN} or {ENV_TOKEN_FILE}]"
            ),
        ),
        click.option(
            "--output",
            "-o",
            type=click.Choice(OUTPUTS),
            expose_value=False,
            callback=_remember,
            help="table for people, json for programs (one document) [default: table]",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


F = TypeVar("F", bound=Callable[..., Any])


def command(group: click.Group, name: str | None = None) -> Callable[[F], click.Command]:
    """Register ``func(session, **params)`` as a command of ``group``, with the
    global options and the shared error handling."""

    def register(func: F) -> click.Command:
        @click.pass_context
        def run(ctx: click.Context, /, **params: Any) -> None:
            session = ctx.find_root().ensure_object(Session)
            try:
                func(session, **params)
            finally:
                session.close()

        run.__doc__ = func.__doc__
        run.__name__ = func.__name__
        run = global_options(run)
        # Then the command's own parameters, declared on ``func`` with click's
        # decorators: click reverses the list, so they come first in --help.
        run.__click_params__ += getattr(func, "__click_params__", [])  # type: ignore[attr-defined]
        return group.command(name, epilog=EXIT_CODES_HELP)(run)

    return register


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_option(default: str, maximum: timedelta) -> Callable[[F], F]:
    """``--since 30s|15m|1h|7d``, passed on as a timedelta of at most ``maximum``.

    A callback rather than a ``click.ParamType`` subclass: that class became
    generic in click 8.5, and this works the same on every click 8.
    """

    def convert(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
        match = _DURATION.match(value.strip())
        if not match:
            raise click.BadParameter(f"{value!r} is not a duration like 30s, 15m, 1h or 7d")
        duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        if not timedelta(0) < duration <= maximum:
            raise click.BadParameter(f"{value!r} must be above 0 and at most {maximum.days}d")
        return duration

    return click.option(
        "--since",
        default=default,
        show_default=True,
        metavar="DURATION",
        callback=convert,
        help=f"how far back, like 30s, 15m, 1h or 7d (at most {maximum.days}d)",
    )


class Root(click.Group):
    """The ``offpath`` group: turns every failure into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.ensure_object(Session)
        try:
            return super().invoke(ctx)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            detail: str = exc.details() or ""
            session = ctx.find_object(Session)
            where = session.calling if session is not None else None
            if code == grpc.StatusCode.UNAVAILABLE:
                detail = f"cannot reach {where} ({detail}); {_unavailable_hint(session)}"
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                detail = (
                    f"{detail}; give AnalyticsIngest's read token with --token-file "
                    f"or {ENV_TOKEN_FILE}"
                )
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                detail = (
                    f"{where} did not answer within the deadline ({detail}); "
                    "a longer --timeout may help"
                )
            _fail(f"{code.name}: {detail}", exit_code(code))
        except SettingsError as exc:
            _fail(str(exc), EXIT_INVALID)
        except CommandError as exc:
            _fail(str(exc), exc.code)


def _unavailable_hint(session: Session | None) -> str:
    """What to check when a call did not reach the server: a plaintext
    client and a TLS server (or the reverse) look the same from here as a
    server that is down, so say which way this client spoke."""
    settings = None if session is None else session._settings
    if settings is None or not settings.tls:
        return f"is `make run` up? If the server speaks TLS, use --tls (or {ENV_TLS}=on)"
    return (
        "is the server up, and does it speak TLS? The server certificate must be signed "
        "by --ca-file's CA and name the target's host (or --tls-server-name); a server "
        "asking for client certificates needs --cert-file and --key-file"
    )


def _fail(message: str, code: int) -> None:
    click.echo(f"offpath: {message}", err=True)
    raise click.exceptions.Exit(code)


def run_main(group: click.Group, argv: Sequence[str] | None) -> None:
    group.main(
        args=list(argv) if argv is not None else sys.argv[1:],
        prog_name="offpath",
        complete_var="_OFFPATH_COMPLETE",
    )
