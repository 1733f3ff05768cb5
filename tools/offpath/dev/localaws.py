"""The embedded local AWS endpoint: a moto server on loopback, with the
queue, dead-letter queue and table bootstrapped into it.

``offpath-local-aws`` (or ``python -m offpath.dev.localaws``) serves until
SIGTERM/SIGINT. Port 0 binds a free port; the bound port is logged as
``local_aws_started``. Everything lives in memory and is gone when it stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

import structlog
from moto.server import ThreadedMotoServer

from offpath.dev.bootstrap import ResourceNames, bootstrap
from offpath.kit import defaults
from offpath.kit.logs import configure_logging
from offpath.kit.settings import SettingsError, env_int, env_str, environ
from offpath.kit.signals import stop_on_signals

ENV_HOST = "OFFPATH_LOCAL_AWS_HOST"
ENV_PORT = "OFFPATH_LOCAL_AWS_PORT"
DEFAULT_PORT = 4566
# Credentials and region moto accepts; only filled in where the caller set none.
LOCAL_DEFAULTS = {
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "offpath-local",
    "AWS_SECRET_ACCESS_KEY": "offpath-local",
}

log = structlog.get_logger("offpath.local_aws")


def endpoint_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> None:
    env = environ()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    try:
        default_host = env_str(env, ENV_HOST, defaults.HOST)
        default_port = env_int(env, ENV_PORT, DEFAULT_PORT, minimum=0, maximum=65535)
    except SettingsError as exc:
        parser.error(str(exc))
    parser.add_argument("--host", default=default_host, help=f"bind address (${ENV_HOST})")
    parser.add_argument("--port", type=int, default=default_port, help=f"0 = any (${ENV_PORT})")
    parser.add_argument("--no-bootstrap", action="store_true", help="do not create resources")
    args = parser.parse_args(argv)
    configure_logging("local-aws")
    # One access-log line per AWS call (every long poll) drowns the rest.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # ThreadedMotoServer binds in its thread and waits forever if that fails;
    # find out first, so a busy port is a clear error rather than a hang.
    try:
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        print(
            f"offpath-local-aws: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        sys.exit(2)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    stop = threading.Event()
    with stop_on_signals(stop):
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = endpoint_url(host, port)
            # This process bootstraps itself: point its own clients at itself.
            for key, value in LOCAL_DEFAULTS.items():
                os.environ.setdefault(key, value)
            os.environ["AWS_ENDPOINT_URL"] = url
            for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
                del os.environ[key]
            if not args.no_bootstrap:
                bootstrap(ResourceNames.from_env(os.environ))
            log.info("local_aws_started", host=host, port=port, endpoint=url)
            stop.wait()
        finally:
            server.stop()
    log.info("local_aws_stopped")


if __name__ == "__main__":
    main()
