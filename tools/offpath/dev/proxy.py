"""A fault-injecting TCP proxy that makes an endpoint slow or unresponsive,
for the benchmark's "SQS answers 100 ms slowly or not at all" runs
(``python -m offpath.dev.proxy --upstream HOST:PORT``).

Each accepted connection waits ``delay_ms`` before it is connected upstream
(botocore opens a connection per call to the local endpoint, so every call
pays the delay); ``--blackhole`` accepts and never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import structlog

from offpath.kit.logs import configure_logging
from offpath.kit.signals import stop_on_signals

log = structlog.get_logger("offpath.dev.proxy")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(upstream_host: str, upstream_port: int, delay_s: float, blackhole: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if blackhole:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        await asyncio.sleep(delay_s)
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    with stop_on_signals(stop):
        log.info("server_started", port=port, delay_s=delay_s, blackhole=blackhole)
        async with server:
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--blackhole", action="store_true")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    configure_logging("proxy")
    asyncio.run(serve(host, int(port), args.delay_ms / 1000, args.blackhole))


if __name__ == "__main__":
    main()
