"""The fault proxy's fault logic: what it strips, what it answers, and what
botocore makes of its answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

from offpath.dev.faultproxy import (
    BATCH_FAILURE_CODE,
    Faults,
    HttpError,
    Message,
    Spacer,
    read_message,
    server_error,
    split_batch,
    throttled,
    transaction_throttled,
    with_failed_entries,
)


def _picks(*values: bool) -> Any:
    it: Iterator[bool] = iter(values)
    return lambda: next(it)


def _batch(n: int) -> bytes:
    return json.dumps(
        {"QueueUrl": "q", "Entries": [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(n)]}
    ).encode()


def test_picked_entries_are_stripped_from_the_request() -> None:
    body, failed = split_batch(_batch(4), _picks(True, False, True, False))
    assert failed == ["0", "2"]
    assert [e["Id"] for e in json.loads(body)["Entries"]] == ["1", "3"]


def test_no_rate_strips_nothing() -> None:
    body, failed = split_batch(_batch(3), _picks(False, False, False))
    assert failed == []
    assert len(json.loads(body)["Entries"]) == 3


def test_spacer_picks_the_share_evenly_first_one_included() -> None:
    spacer = Spacer()
    picks = [spacer.pick(0.1) for _ in range(30)]
    assert [i for i, p in enumerate(picks) if p] == [0, 10, 20]
    spacer = Spacer()
    assert sum(spacer.pick(0.3) for _ in range(100)) == 30
    assert not any(Spacer().pick(0.0) for _ in range(10))
    assert all(Spacer().pick(1.0) for _ in range(10))


def test_stripped_entries_are_reported_failed_and_retryable() -> None:
    upstream = json.dumps({"Successful": [{"Id": "1", "MessageId": "x"}]}).encode()
    response = json.loads(with_failed_entries(upstream, ["0", "2"]))
    assert response["Successful"] == [{"Id": "1", "MessageId": "x"}]
    assert [f["Id"] for f in response["Failed"]] == ["0", "2"]
    assert all(f["SenderFault"] is False for f in response["Failed"])
    assert all(f["Code"] == BATCH_FAILURE_CODE for f in response["Failed"])


def _parsed(service: str, operation: str, message: Message) -> dict[str, Any]:
    """``message`` as botocore's parser for ``service`` reads it."""
    model = botocore.session.get_session().get_service_model(service)
    status = int(message.start.split(" ")[1])
    shape = model.operation_model(operation).output_shape
    assert shape is not None
    parsed: dict[str, Any] = create_parser(model.metadata["protocol"]).parse(
        {
            "status_code": status,
            "headers": {k.lower(): v for k, v in message.headers},
            "body": message.body,
        },
        shape,
    )
    return parsed


@pytest.mark.parametrize(
    ("service", "operation"), [("sqs", "SendMessageBatch"), ("dynamodb", "PutItem")]
)
def test_throttling_answers_are_throttling_to_botocore(service: str, operation: str) -> None:
    parsed = _parsed(service, operation, throttled(service))
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 400
    context = RetryContext(attempt_number=1, parsed_response=parsed)
    assert ThrottledRetryableChecker().is_retryable(context), parsed["Error"]


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("service", ["sqs", "dynamodb"])
def test_server_errors_parse_with_their_status(service: str, status: int) -> None:
    operation = "SendMessageBatch" if service == "sqs" else "PutItem"
    parsed = _parsed(service, operation, server_error(service, status))
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == status
    assert parsed["Error"]["Code"] in {
        "InternalFailure",
        "ServiceUnavailable",
        "InternalServerError",
    }


def test_cancelled_transaction_names_a_reason_per_item() -> None:
    message = transaction_throttled(3)
    parsed = _parsed("dynamodb", "TransactWriteItems", message)
    assert parsed["Error"]["Code"] == "TransactionCanceledException"
    # The client adds the modelled field from the body (the integration test
    # sees it there); the parser alone reads the code.
    reasons = json.loads(message.body)["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["ThrottlingError"] * 3


def test_faults_validate_and_describe() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="error_status"):
        Faults(error_status=502)
    with pytest.raises(ValueError, match="unknown fault fields"):
        Faults.from_json({"latency": 1})
    assert Faults().describe() == "none"
    faults = Faults.from_json({"delay_s": 0.3, "error_rate": 0.1, "actions": ["PutItem"]})
    assert faults.describe() == "+300 ms, 10% 503 (PutItem)"
    assert faults.applies_to("PutItem")
    assert not faults.applies_to("GetItem")
    assert Faults.from_json(faults.to_json()) == faults


def _read(data: bytes, *, response: bool = False) -> Message | None:
    async def go() -> Message | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_message(reader, response=response)

    return asyncio.run(go())


def test_reads_a_request_with_a_length() -> None:
    message = _read(
        b"POST / HTTP/1.1\r\nX-Amz-Target: AmazonSQS.SendMessageBatch\r\n"
        b"Content-Length: 2\r\n\r\n{}extra"
    )
    assert message is not None
    assert message.body == b"{}"
    assert message.service == "sqs"
    assert message.action == "SendMessageBatch"


def test_reads_a_chunked_response_as_one_with_a_length() -> None:
    message = _read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        response=True,
    )
    assert message is not None
    assert message.body == b"abcde"
    assert message.header("content-length") == "5"
    assert message.header("transfer-encoding") is None


def test_end_of_stream_and_torn_heads() -> None:
    assert _read(b"") is None
    with pytest.raises(HttpError):
        _read(b"POST / HTTP/1.1\r\nContent-")
    with pytest.raises(HttpError):
        _read(b"POST / HTTP/1.1\r\nno colon here\r\n\r\n")


def test_with_body_reframes_the_length() -> None:
    message = Message("POST / HTTP/1.1", [("Content-Length", "10"), ("Host", "h")], b"0123456789")
    shorter = message.with_body(b"abc")
    assert shorter.header("content-length") == "3"
    assert shorter.encode().endswith(b"\r\n\r\nabc")
