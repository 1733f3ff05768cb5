"""An HTTP-aware fault-injecting proxy in front of the local AWS endpoint, for
the fault suite (``python -m offpath.faults``) and for trying faults by hand
(``python -m offpath.dev.faultproxy --upstream HOST:PORT [fault options]``).

It reads each HTTP/1.1 request (keep-alive, ``Content-Length`` bodies, as
botocore sends them), looks at its ``X-Amz-Target`` (SQS and DynamoDB both
speak the JSON protocol: ``AmazonSQS.SendMessageBatch``,
``DynamoDB_20120810.PutItem``), and, by the :class:`Faults` in force at that
moment, forwards it, delays it, or answers it itself:

- ``delay_s``: every request waits this long before it is forwarded;
- ``refuse``: connections are reset as they are accepted, and open ones at
  their next request (the client sees a connection error at once);
- ``blackhole``: requests are read and never answered (the client waits out
  its read timeout);
- ``error_rate``: this share of requests gets ``error_status`` (500 or 503)
  with an AWS-style JSON error body (botocore retries 5xx);
- ``throttle_rate``: this share gets 400 with the throttling error the
  service really sends (SQS ``RequestThrottled``, DynamoDB
  ``ThrottlingException``), which botocore classifies as throttling;
- ``batch_fail_rate``: in a ``SendMessageBatch``, this share of entries is
  taken out of the request before it is forwarded and
  reported ``Failed`` (retryable, ``SenderFault: false``) in the response, so
  a retry never duplicates a message;
- ``txn_cancel_rate``: this share of ``TransactWriteItems`` calls is answered
  ``TransactionCanceledException`` with ``ThrottlingError`` reasons, as
  DynamoDB does when a transaction is throttled (never forwarded).

Shares are picked evenly spread and the same every run (:class:`Spacer`).
``actions`` limits the faults to those ``X-Amz-Target`` actions (empty: all).
Faults change at run time: in process through :meth:`FaultProxy.set` (the
fault suite), or through the control port (``--control-port``): ``GET
/faults`` answers the faults and counters as JSON, ``PUT /faults`` with a
JSON object of fields sets them (the others return to no fault), ``DELETE
/stats`` sets the counters to zero; :class:`ProxyControl` is its client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from offpath.kit.logs import configure_logging
from offpath.kit.signals import stop_on_signals

log = structlog.get_logger("offpath.dev.faultproxy")

_MAX_HEAD: Final = 64 * 1024
_MAX_BODY: Final = 16 * 1024 * 1024
ERROR_STATUSES: Final = (500, 503)
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# A Failed entry the producer may retry: SQS's own code for a transient failure.
BATCH_FAILURE_CODE: Final = "InternalError"


@dataclass(frozen=True, slots=True)
class Faults:
    """What the proxy does to requests now (the default: nothing)."""

    delay_s: float = 0.0
    refuse: bool = False
    blackhole: bool = False
    error_rate: float = 0.0
    error_status: int = 503
    throttle_rate: float = 0.0
    batch_fail_rate: float = 0.0
    txn_cancel_rate: float = 0.0
    actions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("error_rate", "throttle_rate", "batch_fail_rate", "txn_cancel_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1: {value}")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must not be negative: {self.delay_s}")
        if self.error_status not in ERROR_STATUSES:
            raise ValueError(f"error_status must be one of {ERROR_STATUSES}: {self.error_status}")

    def applies_to(self, action: str) -> bool:
        return not self.actions or action in self.actions

    def describe(self) -> str:
        """The faults in force, briefly (``none`` when there are none)."""
        parts = []
        if self.delay_s:
            parts.append(f"+{self.delay_s * 1000:g} ms")
        if self.refuse:
            parts.append("refused")
        if self.blackhole:
            parts.append("blackhole")
        if self.error_rate:
            parts.append(f"{self.error_rate:.0%} {self.error_status}")
        if self.throttle_rate:
            parts.append(f"{self.throttle_rate:.0%} throttled")
        if self.batch_fail_rate:
            parts.append(f"{self.batch_fail_rate:.0%} batch entries failed")
        if self.txn_cancel_rate:
            parts.append(f"{self.txn_cancel_rate:.0%} transactions cancelled")
        text = ", ".join(parts) or "none"
        if self.actions and parts:
            text += f" ({', '.join(sorted(self.actions))})"
        return text

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["actions"] = sorted(self.actions)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Faults:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "actions" in values:
            values["actions"] = frozenset(values["actions"])
        return cls(**values)


# -- HTTP ---------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One HTTP/1.1 request or response: its first line, headers (in order,
    names as sent) and body."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def with_body(self, body: bytes) -> Message:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        return Message(self.start, headers, body)

    def encode(self) -> bytes:
        head = self.start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers) + "\r\n"
        return head.encode("latin-1") + self.body

    @property
    def action(self) -> str:
        """``SendMessageBatch`` of ``X-Amz-Target: AmazonSQS.SendMessageBatch``."""
        return (self.header("x-amz-target") or "").rpartition(".")[2]

    @property
    def service(self) -> str:
        """``sqs``, ``dynamodb``, or ``""`` (from the target's prefix)."""
        prefix = (self.header("x-amz-target") or "").partition(".")[0]
        if prefix.startswith("AmazonSQS"):
            return "sqs"
        if prefix.startswith("DynamoDB"):
            return "dynamodb"
        return ""


class HttpError(Exception):
    """The peer sent something that is not HTTP/1.1 as we read it."""


async def read_message(reader: asyncio.StreamReader, *, response: bool = False) -> Message | None:
    """The next message on ``reader``, or None at a clean end of stream.
    Bodies: ``Content-Length``, chunked (decoded: the message is re-framed
    with a length), or, for a response without either, up to the end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise HttpError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise HttpError("message head too long") from None
    lines = head.decode("latin-1").split("\r\n")
    start = lines[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"malformed header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    message = Message(start, headers, b"")
    length = message.header("content-length")
    encoding = (message.header("transfer-encoding") or "").lower()
    if "chunked" in encoding:
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # Trailers, if any, up to the empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
        message.headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        return message.with_body(body)
    if length is not None:
        size = int(length)
        if size < 0 or size > _MAX_BODY:
            raise HttpError(f"Content-Length {size} out of range")
        message.body = await reader.readexactly(size)
        return message
    if response and start.split(" ")[1:2] not in (["204"], ["304"]):
        body = await reader.read()
        return message.with_body(body)
    return message


def json_response(
    status: int, payload: Mapping[str, Any], extra_headers: Mapping[str, str] | None = None
) -> Message:
    """A JSON-protocol response (``application/x-amz-json-1.0``)."""
    body = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", "offpath-faultproxy"),
        *(extra_headers or {}).items(),
        ("Content-Length", str(len(body))),
    ]
    return Message(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", headers, body)


def server_error(service: str, status: int) -> Message:
    """A 500 (``InternalFailure``) or 503 (``ServiceUnavailable``) as the
    service would send it."""
    code = "InternalFailure" if status == 500 else "ServiceUnavailable"
    if service == "dynamodb":
        code = "InternalServerError" if status == 500 else "ServiceUnavailable"
    return json_response(
        status,
        {"__type": f"com.amazonaws.{service or 'aws'}#{code}", "message": "injected by faultproxy"},
        {"x-amzn-query-error": f"{code};Receiver"} if service == "sqs" else None,
    )


def throttled(service: str) -> Message:
    """The throttling answer of each service in the JSON protocol: SQS's
    ``RequestThrottled`` (its query-compatible code in ``x-amzn-query-error``,
    which botocore reads), DynamoDB's ``ThrottlingException``."""
    if service == "sqs":
        return json_response(
            400,
            {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"},
            {"x-amzn-query-error": "RequestThrottled;Sender"},
        )
    return json_response(
        400,
        {
            "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
            "message": "Rate of requests exceeds the allowed throughput.",
        },
    )


def transaction_throttled(items: int) -> Message:
    """``TransactionCanceledException`` with every item ``ThrottlingError``."""
    reasons = ", ".join(["ThrottlingError"] * items)
    return json_response(
        400,
        {
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "message": f"Transaction cancelled, please refer cancellation reasons for specific "
            f"reasons [{reasons}]",
            "CancellationReasons": [
                {"Code": "ThrottlingError", "Message": "Throughput exceeds the current capacity."}
            ]
            * items,
        },
    )


class Spacer:
    """Picks a share of what it is asked about, evenly spread and the same
    every run: at 0.1, the 1st, 11th, 21st, ... (the first one included, so
    even a short fault is exercised). Random picks would leave a run of a
    few requests untouched as often as not."""

    def __init__(self) -> None:
        self._credit = 0.0
        self._rate = 0.0

    def pick(self, rate: float) -> bool:
        if rate != self._rate:
            # A new share starts with a pick.
            self._rate, self._credit = rate, 1.0 - rate
        if rate <= 0:
            return False
        self._credit += rate
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False


def split_batch(body: bytes, pick: Callable[[], bool]) -> tuple[bytes, list[str]]:
    """A ``SendMessageBatch`` body without the entries ``pick`` chose, and
    their ids."""
    request = json.loads(body)
    kept, failed = [], []
    for entry in request.get("Entries", []):
        if pick():
            failed.append(str(entry.get("Id")))
        else:
            kept.append(entry)
    request["Entries"] = kept
    return json.dumps(request).encode(), failed


def with_failed_entries(body: bytes, failed: list[str]) -> bytes:
    """A ``SendMessageBatch`` response body with ``failed`` added as
    retryable failures."""
    response = json.loads(body) if body else {}
    response.setdefault("Successful", [])
    response.setdefault("Failed", [])
    response["Failed"].extend(
        {
            "Id": entry_id,
            "SenderFault": False,
            "Code": BATCH_FAILURE_CODE,
            "Message": "injected by faultproxy",
        }
        for entry_id in failed
    )
    return json.dumps(response).encode()


# -- the proxy ------------------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a refusing peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@dataclass
class Stats:
    """Requests seen and faults injected, by kind."""

    requests: int = 0
    forwarded: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "forwarded": self.forwarded,
            "injected": dict(self.faults),
        }


class FaultProxy:
    """The proxy on 127.0.0.1, on a thread of its own with its own event loop.

    ``start()`` binds (port 0: a free one, in :attr:`port`); ``set()``
    switches faults at once for the next request; ``stop()`` closes
    everything."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._bind_port = port
        self._spacers: dict[str, Spacer] = {}
        self._lock = threading.Lock()
        self._faults = Faults()
        self.stats = Stats()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._connections: set[asyncio.StreamWriter] = set()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set(self, faults: Faults | None = None, **fields: Any) -> Faults:
        """Put ``faults`` (or a :class:`Faults` of ``fields``) in force; no
        arguments: no faults."""
        new = faults if faults is not None else Faults(**fields)
        with self._lock:
            self._faults = new
        log.info("faults_set", port=self.port, faults=new.describe())
        return new

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": self._faults.to_json(), "stats": self.stats.to_json()}

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    def _pick(self, kind: str, rate: float) -> bool:
        with self._lock:
            return self._spacers.setdefault(kind, Spacer()).pick(rate)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._connections):
                writer.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", self._bind_port, limit=_MAX_HEAD)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- one connection -----------------------------------------------------------

    def _count(self, kind: str | None) -> None:
        with self._lock:
            if kind is None:
                self.stats.forwarded += 1
            else:
                self.stats.faults[kind] += 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.refuse:
            self._count("refused")
            _reset(writer)
            return
        self._connections.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await read_message(reader)
                if request is None:
                    return
                with self._lock:
                    self.stats.requests += 1
                    faults = self._faults
                action = request.action
                if not faults.applies_to(action):
                    faults = Faults()
                if faults.refuse:
                    self._count("refused")
                    _reset(writer)
                    return
                if faults.blackhole:
                    self._count("blackholed")
                    while await reader.read(65536):
                        pass
                    return
                if faults.delay_s:
                    self._count("delayed")
                    await asyncio.sleep(faults.delay_s)
                answer, upstream = await self._answer(request, faults, upstream)
                writer.write(answer.encode())
                await writer.drain()
                if (request.header("connection") or "").lower() == "close":
                    return
        except (HttpError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("connection_failed", error=str(exc))
        except asyncio.CancelledError:
            return  # the proxy is stopping
        finally:
            self._connections.discard(writer)
            if upstream is not None:
                upstream[1].close()
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self,
        request: Message,
        faults: Faults,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[Message, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        service, action = request.service, request.action
        if faults.error_rate and self._pick("error", faults.error_rate):
            self._count(f"http_{faults.error_status}")
            return server_error(service, faults.error_status), upstream
        cancel = action == "TransactWriteItems" and faults.txn_cancel_rate
        if cancel and self._pick("transaction", faults.txn_cancel_rate):
            self._count("transaction_cancelled")
            items = len(json.loads(request.body or b"{}").get("TransactItems", [])) or 1
            return transaction_throttled(items), upstream
        if faults.throttle_rate and self._pick("throttle", faults.throttle_rate):
            self._count("throttled")
            return throttled(service), upstream
        failed: list[str] = []
        if action == "SendMessageBatch" and faults.batch_fail_rate:
            rate = faults.batch_fail_rate
            body, failed = split_batch(request.body, lambda: self._pick("entry", rate))
            if failed:
                with self._lock:
                    self.stats.faults["batch_entries_failed"] += len(failed)
                if not json.loads(body)["Entries"]:
                    # Nothing left to send: answer for SQS.
                    return json_response(200, json.loads(with_failed_entries(b"", failed))), (
                        upstream
                    )
                request = request.with_body(body)
        response, upstream = await self._forward(request, upstream)
        if failed and response.start.split(" ")[1:2] == ["200"]:
            response = response.with_body(with_failed_entries(response.body, failed))
        return response, upstream

    async def _forward(
        self,
        request: Message,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[Message, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """Send ``request`` upstream (reconnecting once if the kept-alive
        connection was closed) and read the response."""
        for attempt in range(2):
            if upstream is None:
                upstream = await asyncio.open_connection(*self._upstream, limit=_MAX_HEAD)
            up_reader, up_writer = upstream
            try:
                up_writer.write(request.encode())
                await up_writer.drain()
                response = await read_message(up_reader, response=True)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                response = None
            if response is not None:
                self._count(None)
                if (response.header("connection") or "").lower() == "close":
                    up_writer.close()
                    upstream = None
                return response, upstream
            up_writer.close()
            upstream = None
            if attempt:
                break
        raise ConnectionError("upstream closed the connection")


# -- control and command line -----------------------------------------------------------


async def _control(
    proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``GET /faults`` and ``PUT /faults`` on the control port."""
    try:
        while (request := await read_message(reader)) is not None:
            method, _, rest = request.start.partition(" ")
            path = rest.partition(" ")[0]
            if path == "/stats" and method == "DELETE":
                proxy.reset_stats()
                answer = json_response(200, proxy.snapshot())
            elif path != "/faults":
                answer = json_response(404, {"error": "not found: use /faults"})
            elif method == "GET":
                answer = json_response(200, proxy.snapshot())
            elif method in ("PUT", "POST"):
                try:
                    proxy.set(Faults.from_json(json.loads(request.body or b"{}")))
                    answer = json_response(200, proxy.snapshot())
                except (ValueError, TypeError) as exc:
                    answer = json_response(400, {"error": str(exc)})
            else:
                answer = json_response(400, {"error": f"method {method} not allowed"})
            writer.write(answer.encode())
            await writer.drain()
    except (HttpError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class ProxyControl:
    """The control port's client: a proxy in another process, driven like
    an in-process :class:`FaultProxy` (``set``, ``snapshot``, ``reset_stats``)."""

    def __init__(self, port: int, control_port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self._control = (host, control_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        connection = http.client.HTTPConnection(*self._control, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=payload)
            response = connection.getresponse()
            data = json.loads(response.read() or b"{}")
            if response.status != 200:
                raise RuntimeError(f"fault proxy control: {method} {path}: {data}")
            return data
        finally:
            connection.close()

    def set(self, faults: Faults | None = None, **fields: Any) -> Faults:
        new = faults if faults is not None else Faults(**fields)
        self._call("PUT", "/faults", new.to_json())
        return new

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = self._call("GET", "/faults")
        return data

    def reset_stats(self) -> None:
        self._call("DELETE", "/stats")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="host:port of the AWS endpoint")
    parser.add_argument("--port", type=int, default=0, help="where to listen (0: a free port)")
    parser.add_argument("--control-port", type=int, default=None, help="GET/PUT /faults here")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--refuse", action="store_true")
    parser.add_argument("--blackhole", action="store_true")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=503, choices=ERROR_STATUSES)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--batch-fail-rate", type=float, default=0.0)
    parser.add_argument("--txn-cancel-rate", type=float, default=0.0)
    parser.add_argument("--action", action="append", default=[], help="only these actions")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    try:
        faults = Faults(
            delay_s=args.delay_ms / 1000,
            refuse=args.refuse,
            blackhole=args.blackhole,
            error_rate=args.error_rate,
            error_status=args.error_status,
            throttle_rate=args.throttle_rate,
            batch_fail_rate=args.batch_fail_rate,
            txn_cancel_rate=args.txn_cancel_rate,
            actions=frozenset(args.action),
        )
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging("faultproxy")
    proxy = FaultProxy(host, int(port), port=args.port).start()
    proxy.set(faults)
    stop = threading.Event()
    control: asyncio.base_events.Server | None = None
    assert proxy._loop is not None
    if args.control_port is not None:

        async def open_control() -> asyncio.base_events.Server:
            return await asyncio.start_server(
                lambda r, w: _control(proxy, r, w), "127.0.0.1", args.control_port
            )

        control = asyncio.run_coroutine_threadsafe(open_control(), proxy._loop).result(10)
    with stop_on_signals(stop):
        log.info(
            "server_started",
            port=proxy.port,
            control_port=control.sockets[0].getsockname()[1] if control else None,
            faults=faults.describe(),
        )
        stop.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
