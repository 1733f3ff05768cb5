"""The shared fakes of offpath.testing: they satisfy the same Protocols as boto3's
clients (checked by mypy on this file) and behave as SQS and DynamoDB do where
offpath relies on it (checked here), so a unit test built on them means something."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from offpath.client.dlq import DlqClient
from offpath.dev.bootstrap import SetupDynamoDbClient, SetupSqsClient
from offpath.emitter.sqs import SqsSendClient
from offpath.ingest import rollups
from offpath.ingest.consumer import SqsConsumeClient
from offpath.ingest.store import TIME_INDEX, EventTableClient, create_table_request
from offpath.kit import aws
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeSqs

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import QueryInputTypeDef


def test_fakes_and_boto3_clients_satisfy_the_same_protocols() -> None:
    """Each runtime Protocol accepts both boto3's client and the fake (mypy checks
    these assignments; at run time they are plain objects)."""
    sqs, ddb = FakeSqs(), FakeDynamoDb()
    fakes: tuple[
        SqsSendClient,
        SqsConsumeClient,
        DlqClient,
        SetupSqsClient,
        EventTableClient,
        SetupDynamoDbClient,
    ] = (sqs, sqs, sqs, sqs, ddb, ddb)
    assert len(fakes) == 6


def test_boto3_clients_satisfy_the_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real clients fit the same seams (constructed, never called)."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    sqs, ddb = aws.sqs_client(), aws.dynamodb_client()
    real: tuple[SqsSendClient, SqsConsumeClient, DlqClient, EventTableClient] = (
        sqs,
        sqs,
        sqs,
        ddb,
    )
    assert len(real) == 4
    sqs.close()
    ddb.close()


class TestFakeSqs:
    def test_fifo_deduplicates_and_serves_one_group_at_a_time(self) -> None:
        """A resend with the same MessageDeduplicationId is dropped, and a group's
        next message waits while one of the group is in flight."""
        sqs = FakeSqs()
        url = sqs.add_queue("q.fifo", FifoQueue="true")
        for dedup in ("a", "a", "b"):
            sqs.send_message(
                QueueUrl=url, MessageBody=dedup, MessageGroupId="g", MessageDeduplicationId=dedup
            )
        assert sqs.bodies(url) == ["a", "b"]
        first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in first] == ["a", "b"]
        assert sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"] == []

    def test_visibility_timeout_and_redrive(self) -> None:
        """An undeleted message comes back after its visibility timeout with a higher
        receive count, and moves to the DLQ after maxReceiveCount receives."""
        sqs = FakeSqs()
        dlq = sqs.add_queue("q-dlq")
        policy = {"deadLetterTargetArn": sqs.queue("q-dlq").arn, "maxReceiveCount": "2"}
        url = sqs.add_queue("q", VisibilityTimeout="30", RedrivePolicy=json.dumps(policy))
        sqs.send_message(QueueUrl=url, MessageBody="x")
        counts = []
        for _ in range(2):
            (message,) = sqs.receive_message(
                QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
            )["Messages"]
            counts.append(message["Attributes"]["ApproximateReceiveCount"])
            assert sqs.receive_message(QueueUrl=url)["Messages"] == []
            sqs.advance(31)
        assert counts == ["1", "2"]
        assert sqs.receive_message(QueueUrl=url)["Messages"] == []
        assert sqs.bodies(dlq) == ["x"]

    def test_batch_limits_are_enforced(self) -> None:
        """More than 10 entries, or two with one Id, are refused as SQS refuses them."""
        sqs = FakeSqs()
        url = sqs.add_queue("q")
        with pytest.raises(ClientError, match="TooManyEntriesInBatchRequest"):
            sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(11)],
            )
        with pytest.raises(ClientError, match="BatchEntryIdsNotDistinct"):
            sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": "1", "MessageBody": "m"}, {"Id": "1", "MessageBody": "n"}],
            )

    def test_injected_outcomes_come_first_then_normal_answers(self) -> None:
        """journal.inject plays its outcomes on the next calls of that operation, in
        order, and every call is journaled."""
        sqs = FakeSqs()
        url = sqs.add_queue("q")
        sqs.journal.inject(
            "send_message",
            client_error("ServiceUnavailable", "down", "SendMessage"),
            lambda request: None,
        )
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            sqs.send_message(QueueUrl=url, MessageBody="1")
        sqs.send_message(QueueUrl=url, MessageBody="2")
        sqs.send_message(QueueUrl=url, MessageBody="3")
        assert sqs.bodies(url) == ["2", "3"]
        assert [r["MessageBody"] for r in sqs.journal.of("send_message")] == ["1", "2", "3"]

    def test_unknown_queue_is_the_sqs_error(self) -> None:
        """A name that does not exist fails as SQS's NonExistentQueue."""
        with pytest.raises(ClientError, match="NonExistentQueue"):
            FakeSqs().get_queue_url(QueueName="nope")

    def test_move_task_moves_a_dead_letter_queues_visible_messages(self) -> None:
        """StartMessageMoveTask moves what is visible in a DLQ (not what is in
        flight) to the destination as new messages, refuses a queue that is no
        queue's DLQ, and ListMessageMoveTasks shows the finished task without
        its handle."""
        sqs = FakeSqs()
        dlq_url = sqs.add_queue("d.fifo", FifoQueue="true")
        dlq_arn = sqs.queue(dlq_url).arn
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
        queue_url = sqs.add_queue("q.fifo", FifoQueue="true", RedrivePolicy=policy)
        for n in range(3):
            sqs.send_message(
                QueueUrl=dlq_url,
                MessageBody=str(n),
                MessageGroupId=f"g{n}",
                MessageDeduplicationId=str(n),
            )
        sqs.receive_message(QueueUrl=dlq_url, VisibilityTimeout=30)  # "0" in flight
        with pytest.raises(ClientError, match="InvalidParameterValue"):
            sqs.start_message_move_task(SourceArn=sqs.queue(queue_url).arn)
        sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=sqs.queue(queue_url).arn)
        assert sqs.bodies(queue_url) == ["1", "2"]
        assert sqs.bodies(dlq_url) == ["0"]
        (task,) = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]
        assert task["Status"] == "COMPLETED"
        assert task["ApproximateNumberOfMessagesMoved"] == 2
        assert "TaskHandle" not in task


class TestFakeDynamoDb:
    @staticmethod
    def _table() -> FakeDynamoDb:
        ddb = FakeDynamoDb(page_items=2)
        ddb.create_table(**create_table_request("t"))
        return ddb

    @staticmethod
    def _item(event_id: str, bucket: str, sk: str) -> dict[str, dict[str, str]]:
        return {"event_id": {"S": event_id}, "bucket": {"S": bucket}, "sk": {"S": sk}}

    def test_batch_write_limits_and_unprocessed_items(self) -> None:
        """26 requests or duplicate keys are refused; leave_unprocessed hands back the
        last requests unwritten, as DynamoDB does under throttling."""
        ddb = self._table()
        with pytest.raises(ClientError, match="ValidationException"):
            ddb.batch_write_item(
                RequestItems={
                    "t": [{"PutRequest": {"Item": self._item(str(i), "b", "s")}} for i in range(26)]
                }
            )
        with pytest.raises(ClientError, match="duplicates"):
            ddb.batch_write_item(
                RequestItems={
                    "t": [{"PutRequest": {"Item": self._item("1", "b", "s")}} for _ in range(2)]
                }
            )
        ddb.leave_unprocessed(1)
        response = ddb.batch_write_item(
            RequestItems={
                "t": [{"PutRequest": {"Item": self._item(str(i), "b", f"s{i}")}} for i in range(3)]
            }
        )
        assert len(response["UnprocessedItems"]["t"]) == 1
        assert [item["event_id"]["S"] for item in ddb.items("t")] == ["0", "1"]

    def test_index_query_pages_in_order(self) -> None:
        """A Query on the index returns the partition's items in sort order, a page
        at a time with LastEvaluatedKey, in both directions."""
        ddb = self._table()
        ddb.batch_write_item(
            RequestItems={
                "t": [
                    {"PutRequest": {"Item": self._item(str(i), "b", f"s{i}")}} for i in (3, 1, 2, 4)
                ]
            }
        )
        for forward, expected in (
            (True, ["s1", "s2", "s3", "s4"]),
            (False, ["s4", "s3", "s2", "s1"]),
        ):
            seen: list[str] = []
            request: QueryInputTypeDef = {
                "TableName": "t",
                "IndexName": TIME_INDEX,
                "KeyConditionExpression": "#p = :p AND #s BETWEEN :lo AND :hi",
                "ExpressionAttributeNames": {"#p": "bucket", "#s": "sk"},
                "ExpressionAttributeValues": {
                    ":p": {"S": "b"},
                    ":lo": {"S": "s"},
                    ":hi": {"S": "t"},
                },
                "ScanIndexForward": forward,
            }
            while True:
                page = ddb.query(**request)
                seen.extend(item["sk"]["S"] for item in page["Items"])
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            assert seen == expected

    def test_reversed_between_is_refused_even_on_an_empty_partition(self) -> None:
        """DynamoDB validates the key condition before reading: a BETWEEN whose
        bounds are reversed fails although nothing would match."""
        ddb = self._table()
        with pytest.raises(ClientError, match="BETWEEN"):
            ddb.query(
                TableName="t",
                IndexName=TIME_INDEX,
                KeyConditionExpression="#p = :p AND #s BETWEEN :lo AND :hi",
                ExpressionAttributeNames={"#p": "bucket", "#s": "sk"},
                ExpressionAttributeValues={
                    ":p": {"S": "empty"},
                    ":lo": {"S": "z"},
                    ":hi": {"S": "a"},
                },
            )


class TestFakeDynamoDbConditionalWrites:
    def _ddb(self) -> FakeDynamoDb:
        ddb = FakeDynamoDb()
        ddb.create_table(**rollups.create_table_request("r"))
        return ddb

    def test_conditional_put_refuses_and_bills_by_size(self) -> None:
        """A PutItem whose condition fails raises ConditionalCheckFailedException
        and changes nothing; a 2.5 KB item is billed 3 write units."""
        ddb = self._ddb()
        key = {"pk": {"S": "a"}, "sk": {"S": "1"}}
        item = {**key, "owner": {"S": "m1"}, "blob": {"S": "x" * 2500}}
        condition = {
            "ConditionExpression": "attribute_not_exists(#p) OR #o = :m",
            "ExpressionAttributeNames": {"#p": "pk", "#o": "owner"},
        }
        first = ddb.put_item(
            TableName="r",
            Item=item,
            ExpressionAttributeValues={":m": {"S": "m1"}},
            ReturnConsumedCapacity="TOTAL",
            **condition,  # type: ignore[arg-type]
        )
        assert first["ConsumedCapacity"]["CapacityUnits"] == 3.0
        with pytest.raises(ClientError) as info:
            ddb.put_item(
                TableName="r",
                Item={**key, "owner": {"S": "m2"}},
                ExpressionAttributeValues={":m": {"S": "m2"}},
                **condition,  # type: ignore[arg-type]
            )
        assert info.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
        assert ddb.items("r") == [item]

    def test_transaction_is_all_or_nothing_with_reasons_in_order(self) -> None:
        """A transaction whose second action's condition fails applies nothing and
        names that action in CancellationReasons; ADD creates a counter on first write."""
        ddb = self._ddb()

        def update(sk: str, condition: str | None = None) -> Any:
            body: dict[str, Any] = {
                "TableName": "r",
                "Key": {"pk": {"S": "p"}, "sk": {"S": sk}},
                "UpdateExpression": "SET #t = :t ADD #n :one",
                "ExpressionAttributeNames": {"#t": "expires_at", "#n": "n"},
                "ExpressionAttributeValues": {":t": {"N": "9"}, ":one": {"N": "1"}},
            }
            if condition:
                body["ConditionExpression"] = condition
            return {"Update": body}

        ddb.transact_write_items(TransactItems=[update("a"), update("b")])
        assert [i["n"] for i in ddb.items("r")] == [{"N": "1"}, {"N": "1"}]
        with pytest.raises(ClientError) as info:
            ddb.transact_write_items(
                TransactItems=[update("a"), update("b", "attribute_not_exists(#n)")]
            )
        reasons = info.value.response["CancellationReasons"]
        assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
        assert [i["n"] for i in ddb.items("r")] == [{"N": "1"}, {"N": "1"}]
