"""AWS requests and $ per month per 1 M queries, from counted requests
(``python -m offpath.dev.cost [--queries N] [--rate R]``).

Starts the local stack (local endpoint, AnalyticsIngest, QueryService) on
free ports with both services talking to the endpoint through a counting
proxy, sends ``N`` queries at ``R`` a second, waits until AnalyticsIngest
has written every event, and counts the SQS and DynamoDB requests by action
(``X-Amz-Target``) after start-up. DynamoDB write units are read from the
requests as DynamoDB bills them: ``PutItem`` by item size (1 unit per KB,
again for the ``by_time`` index, which projects every attribute), a
``TransactWriteItems`` 2 units per action (rollup items are under 1 KB).
Idle polling is added apart: pollers x (seconds in 30 days / wait).
Prices are list prices (us-east-1) stated in :data:`PRICES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from offpath.client.client import OffpathClient
from offpath.dev.localaws import LOCAL_DEFAULTS
from offpath.dev.stack import DevStack
from offpath.ingest import settings as ingest_settings
from offpath.kit.metrics import scrape
from offpath.query import settings as query_settings
from offpath.testing.dynamodb import item_size

MONTH_S: Final = 30 * 86_400
# (what, $ per million, source). SQS: FIFO requests after the first million a
# month (free tier); each 64 KB of a request's payload is one request.
# DynamoDB on demand, after the November 2024 price cut.
PRICES: Final = {
    "sqs_fifo_request": (0.50, "aws.amazon.com/sqs/pricing, us-east-1, read 2026-11"),
    "ddb_write_unit": (0.625, "aws.amazon.com/dynamodb/pricing/on-demand, us-east-1, 2026-11"),
    "ddb_read_unit": (0.125, "aws.amazon.com/dynamodb/pricing/on-demand, us-east-1, 2026-11"),
}
SQS_FREE_REQUESTS: Final = 1_000_000


@dataclass
class Counts:
    """Requests by (service, action), DynamoDB write units and read requests."""

    requests: Counter[tuple[str, str]]
    write_units: float = 0.0
    read_units: float = 0.0


class CountingProxy:
    """A TCP proxy that reads each HTTP request's ``X-Amz-Target`` and body
    on the way through (responses pass untouched)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self.counts = Counts(Counter())
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cost-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        async def cancel() -> None:
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def snapshot(self) -> Counts:
        with self._lock:
            c = self.counts
            return Counts(Counter(c.requests), c.write_units, c.read_units)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.create_task(_pipe(up_reader, writer))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = _headers(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self._count(headers.get("x-amz-target", ""), body)
                up_writer.write(head + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()
            await back

    def _count(self, target: str, body: bytes) -> None:
        prefix, _, action = target.partition(".")
        service = "sqs" if prefix.startswith("AmazonSQS") else "dynamodb"
        writes = reads = 0.0
        if service == "dynamodb" and body:
            request: dict[str, Any] = json.loads(body)
            if action == "PutItem":
                # The item, and its copy in the by_time index (projection ALL).
                writes = 2 * max(1, math.ceil(item_size(request["Item"]) / 1024))
            elif action == "TransactWriteItems":
                writes = 2 * len(request["TransactItems"])
            elif action in ("GetItem", "Query"):
                reads = 0.5  # eventually consistent, items under 4 KB
        with self._lock:
            self.counts.requests[(service, action or "?")] += 1
            self.counts.write_units += writes
            self.counts.read_units += reads


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }


def _written(port: int) -> float:
    for line in scrape(port, timeout=5).splitlines():
        if line.startswith("offpath_ingest_events_written_total "):
            return float(line.split()[1])
    return 0.0


def measure(queries: int, rate: float, pollers: int, wait_s: int) -> tuple[Counts, float]:
    """Run ``queries`` through the local stack; the counted requests and the seconds taken."""
    with tempfile.TemporaryDirectory() as logs:
        stack = DevStack(aws_port=0, log_dir=Path(logs))
        stack.start(("local-aws",))
        host, port = stack.endpoint.removeprefix("http://").rsplit(":", 1)
        proxy = CountingProxy(host, int(port))
        proxy.start()
        try:
            aws = {**LOCAL_DEFAULTS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
            ingest = stack.spawn(
                "ingest",
                "offpath.ingest",
                {
                    **aws,
                    ingest_settings.ENV_HOST: stack.host,
                    ingest_settings.ENV_PORT: "0",
                    ingest_settings.ENV_METRICS_PORT: "0",
                    ingest_settings.ENV_POLLERS: str(pollers),
                    ingest_settings.ENV_WAIT_S: str(wait_s),
                },
            )
            query = stack.spawn(
                "query",
                "offpath.query",
                {
                    **aws,
                    query_settings.ENV_HOST: stack.host,
                    query_settings.ENV_PORT: "0",
                    query_settings.ENV_METRICS_PORT: "0",
                },
            )
            assert ingest.metrics_port is not None
            time.sleep(1)  # start-up look-ups and the first long polls are not per query
            before = proxy.snapshot()
            client = OffpathClient(query_target=f"{stack.host}:{query.port}")
            started = time.monotonic()
            for n in range(queries):
                client.query(f"kubernetes and python {n % 7}")
                delay = started + (n + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            deadline = time.monotonic() + 120
            while _written(ingest.metrics_port) < queries and time.monotonic() < deadline:
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            after = proxy.snapshot()
        finally:
            stack.stop()
            proxy.stop()
    counted = Counts(
        after.requests - before.requests,
        after.write_units - before.write_units,
        after.read_units - before.read_units,
    )
    return counted, elapsed


def report(counts: Counts, queries: int, elapsed: float, pollers: int, wait_s: int) -> str:
    scale = 1_000_000 / queries
    idle = pollers * MONTH_S / wait_s
    sqs = sum(n for (service, _), n in counts.requests.items() if service == "sqs") * scale
    lines = [
        f"{queries} queries at {queries / elapsed:.0f}/s over {elapsed:.1f} s, "
        f"{pollers} poller(s), {wait_s} s waits; per 1 M queries:",
        "",
        "| requests | per 1 M queries |",
        "|---|---|",
    ]
    for (service, action), n in sorted(counts.requests.items()):
        lines.append(f"| {service} {action} | {n * scale:,.0f} |")
    lines.append(f"| sqs ReceiveMessage, idle, a 30-day month | {idle:,.0f} |")
    wru, rru = counts.write_units * scale, counts.read_units * scale
    sqs_total = sqs + idle
    sqs_usd = max(0.0, sqs_total - SQS_FREE_REQUESTS) / 1e6 * PRICES["sqs_fifo_request"][0]
    wru_usd = wru / 1e6 * PRICES["ddb_write_unit"][0]
    rru_usd = rru / 1e6 * PRICES["ddb_read_unit"][0]
    lines += [
        "",
        f"SQS: {sqs_total:,.0f} requests (idle included) = ${sqs_usd:.2f} after the free "
        f"million (${sqs_total / 1e6 * PRICES['sqs_fifo_request'][0]:.2f} without it)",
        f"DynamoDB: {wru:,.0f} write units = ${wru_usd:.2f}, {rru:,.0f} read units = "
        f"${rru_usd:.4f}",
        "Prices: " + "; ".join(f"{k} ${p}/M ({src})" for k, (p, src) in PRICES.items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="queries a second")
    parser.add_argument("--pollers", type=int, default=1)
    parser.add_argument("--wait-s", type=int, default=20)
    args = parser.parse_args()
    counts, elapsed = measure(args.queries, args.rate, args.pollers, args.wait_s)
    print(report(counts, args.queries, elapsed, args.pollers, args.wait_s))


if __name__ == "__main__":
    main()
