"""An in-memory DynamoDB with boto3's signatures, for unit tests.

It implements every DynamoDB call offpath makes, with the behaviour offpath
relies on and the limits DynamoDB enforces: tables with a key schema and
global secondary indexes, ``BatchWriteItem`` (1 to 25 requests, no duplicate
keys, ``UnprocessedItems`` on demand, which moto never returns), ``GetItem``
and ``Query`` over the table or an index (equality on the partition key;
``=``, ``<``, ``<=``, ``>``, ``>=``, ``BETWEEN`` or ``begins_with`` on the
sort key; order, ``Limit``, pages with ``LastEvaluatedKey`` after
``page_items`` items, as DynamoDB's 1 MB page would; projections). Typed
exactly as boto3's client, so the type checker holds it to the Protocols
the runtime code declares (``EventTableClient``, ...), no cast needed.
"""

from __future__ import annotations

import operator
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Unpack, cast

from offpath.testing.calls import CallJournal, client_error, response_metadata

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        BatchWriteItemInputTypeDef,
        BatchWriteItemOutputTypeDef,
        CreateTableInputTypeDef,
        CreateTableOutputTypeDef,
        DescribeTableInputTypeDef,
        DescribeTableOutputTypeDef,
        DescribeTimeToLiveInputTypeDef,
        DescribeTimeToLiveOutputTypeDef,
        GetItemInputTypeDef,
        GetItemOutputTypeDef,
        QueryInputTypeDef,
        QueryOutputTypeDef,
        UpdateTimeToLiveInputTypeDef,
        UpdateTimeToLiveOutputTypeDef,
    )

Item = dict[str, Any]  # attribute name -> AttributeValue ({"S": ...}, {"N": ...}, ...)

_MAX_BATCH_WRITE = 25
_SORT_CONDITION = re.compile(
    r"^\s*(?P<name>[#\w]+)\s*(?:(?P<op><=|>=|=|<|>)\s*(?P<value>:\w+)"
    r"|BETWEEN\s+(?P<low>:\w+)\s+AND\s+(?P<high>:\w+))\s*$",
    re.IGNORECASE,
)
_BEGINS_WITH = re.compile(r"^\s*begins_with\(\s*(?P<name>[#\w]+)\s*,\s*(?P<value>:\w+)\s*\)\s*$")
_PARTITION_CONDITION = re.compile(r"^\s*(?P<name>[#\w]+)\s*=\s*(?P<value>:\w+)\s*$")
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _scalar(value: Mapping[str, Any]) -> Any:
    """An AttributeValue as something that orders as DynamoDB orders it."""
    ((kind, raw),) = value.items()
    if kind == "N":
        return Decimal(raw)
    if kind in ("S", "B"):
        return raw
    raise ValueError(f"{kind} is not a key type")


@dataclass
class FakeIndex:
    name: str
    partition: str
    sort: str | None


@dataclass
class FakeTable:
    name: str
    partition: str
    sort: str | None
    indexes: dict[str, FakeIndex]
    description: dict[str, Any]
    items: dict[tuple[Any, ...], Item] = field(default_factory=dict)
    ttl: dict[str, Any] = field(default_factory=lambda: {"TimeToLiveStatus": "DISABLED"})

    def key_of(self, item: Mapping[str, Any]) -> tuple[Any, ...]:
        names = [self.partition] if self.sort is None else [self.partition, self.sort]
        missing = [n for n in names if n not in item]
        if missing:
            raise client_error(
                "ValidationException",
                f"One or more parameter values were invalid: Missing the key {missing[0]} "
                "in the item",
                "PutItem",
            )
        return tuple(_scalar(item[n]) for n in names)


class FakeDynamoDb:
    """In-memory DynamoDB; ``journal`` records every call (and injects faults)."""

    def __init__(self, *, page_items: int = 1000) -> None:
        self.journal = CallJournal()
        self.tables: dict[str, FakeTable] = {}
        self.page_items = page_items
        self._unprocessed: deque[int | None] = deque()

    # -- the test's controls ---------------------------------------------------

    def leave_unprocessed(self, *counts: int | None) -> None:
        """The next ``BatchWriteItem`` calls hand back the last ``counts[n]``
        requests as UnprocessedItems (``None``: all of them), as DynamoDB
        does under throttling."""
        self._unprocessed.extend(counts)

    def items(self, table: str) -> list[Item]:
        """Every item of ``table``, in key order."""
        stored = self.tables[table].items
        return [stored[key] for key in sorted(stored)]

    # -- tables ----------------------------------------------------------------

    def create_table(self, **kwargs: Unpack[CreateTableInputTypeDef]) -> CreateTableOutputTypeDef:
        scripted = self.journal.record("create_table", kwargs)
        if scripted is not None:
            return cast("CreateTableOutputTypeDef", scripted)
        name = kwargs["TableName"]
        if name in self.tables:
            raise client_error(
                "ResourceInUseException", f"Table already exists: {name}", "CreateTable"
            )
        partition, sort = self._key_schema(kwargs["KeySchema"])
        indexes = {}
        for index in kwargs.get("GlobalSecondaryIndexes", []):
            index_partition, index_sort = self._key_schema(index["KeySchema"])
            indexes[index["IndexName"]] = FakeIndex(index["IndexName"], index_partition, index_sort)
        description = {
            "TableName": name,
            "TableStatus": "ACTIVE",
            "KeySchema": list(kwargs["KeySchema"]),
            "AttributeDefinitions": list(kwargs["AttributeDefinitions"]),
            "GlobalSecondaryIndexes": [
                {**dict(index), "IndexStatus": "ACTIVE"}
                for index in kwargs.get("GlobalSecondaryIndexes", [])
            ],
            "BillingModeSummary": {"BillingMode": kwargs.get("BillingMode", "PROVISIONED")},
        }
        self.tables[name] = FakeTable(name, partition, sort, indexes, description)
        return cast(
            "CreateTableOutputTypeDef",
            {"TableDescription": description, "ResponseMetadata": response_metadata()},
        )

    def describe_table(
        self, **kwargs: Unpack[DescribeTableInputTypeDef]
    ) -> DescribeTableOutputTypeDef:
        scripted = self.journal.record("describe_table", kwargs)
        if scripted is not None:
            return cast("DescribeTableOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "DescribeTable")
        return cast(
            "DescribeTableOutputTypeDef",
            {"Table": table.description, "ResponseMetadata": response_metadata()},
        )

    def describe_time_to_live(
        self, **kwargs: Unpack[DescribeTimeToLiveInputTypeDef]
    ) -> DescribeTimeToLiveOutputTypeDef:
        scripted = self.journal.record("describe_time_to_live", kwargs)
        if scripted is not None:
            return cast("DescribeTimeToLiveOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "DescribeTimeToLive")
        return cast(
            "DescribeTimeToLiveOutputTypeDef",
            {"TimeToLiveDescription": dict(table.ttl), "ResponseMetadata": response_metadata()},
        )

    def update_time_to_live(
        self, **kwargs: Unpack[UpdateTimeToLiveInputTypeDef]
    ) -> UpdateTimeToLiveOutputTypeDef:
        scripted = self.journal.record("update_time_to_live", kwargs)
        if scripted is not None:
            return cast("UpdateTimeToLiveOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "UpdateTimeToLive")
        spec = kwargs["TimeToLiveSpecification"]
        table.ttl = {
            "TimeToLiveStatus": "ENABLED" if spec["Enabled"] else "DISABLED",
            "AttributeName": spec["AttributeName"],
        }
        return cast(
            "UpdateTimeToLiveOutputTypeDef",
            {"TimeToLiveSpecification": dict(spec), "ResponseMetadata": response_metadata()},
        )

    # -- items -------------------------------------------------------------------

    def batch_write_item(
        self, **kwargs: Unpack[BatchWriteItemInputTypeDef]
    ) -> BatchWriteItemOutputTypeDef:
        scripted = self.journal.record("batch_write_item", kwargs)
        if scripted is not None:
            return cast("BatchWriteItemOutputTypeDef", scripted)
        unprocessed: dict[str, list[Any]] = {}
        requests_in_call = sum(len(r) for r in kwargs["RequestItems"].values())
        if not 1 <= requests_in_call <= _MAX_BATCH_WRITE:
            raise client_error(
                "ValidationException",
                f"Too many items requested for the BatchWriteItem call ({requests_in_call}); "
                f"1 to {_MAX_BATCH_WRITE} are allowed",
                "BatchWriteItem",
            )
        leave = self._unprocessed.popleft() if self._unprocessed else 0
        for name, requests in kwargs["RequestItems"].items():
            table = self._table(name, "BatchWriteItem")
            keys = [
                table.key_of(
                    r["PutRequest"]["Item"] if "PutRequest" in r else r["DeleteRequest"]["Key"]
                )
                for r in requests
            ]
            if len(set(keys)) != len(keys):
                raise client_error(
                    "ValidationException",
                    "Provided list of item keys contains duplicates",
                    "BatchWriteItem",
                )
            count = len(requests) if leave is None else min(leave, len(requests))
            done, left = (
                list(requests[: len(requests) - count]),
                list(requests[len(requests) - count :]),
            )
            for request, key in zip(done, keys, strict=False):
                if "PutRequest" in request:
                    table.items[key] = dict(request["PutRequest"]["Item"])
                else:
                    table.items.pop(key, None)
            if left:
                unprocessed[name] = left
        return cast(
            "BatchWriteItemOutputTypeDef",
            {"UnprocessedItems": unprocessed, "ResponseMetadata": response_metadata()},
        )

    def get_item(self, **kwargs: Unpack[GetItemInputTypeDef]) -> GetItemOutputTypeDef:
        scripted = self.journal.record("get_item", kwargs)
        if scripted is not None:
            return cast("GetItemOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "GetItem")
        item = table.items.get(table.key_of(kwargs["Key"]))
        response: dict[str, Any] = {"ResponseMetadata": response_metadata()}
        if item is not None:
            response["Item"] = self._project(
                item, kwargs.get("ProjectionExpression"), kwargs.get("ExpressionAttributeNames")
            )
        return cast("GetItemOutputTypeDef", response)

    def query(self, **kwargs: Unpack[QueryInputTypeDef]) -> QueryOutputTypeDef:
        scripted = self.journal.record("query", kwargs)
        if scripted is not None:
            return cast("QueryOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "Query")
        index_name = kwargs.get("IndexName")
        if index_name is None:
            partition, sort = table.partition, table.sort
        elif index_name in table.indexes:
            index = table.indexes[index_name]
            partition, sort = index.partition, index.sort
        else:
            raise client_error(
                "ValidationException",
                f"The table does not have the specified index: {index_name}",
                "Query",
            )
        names = dict(kwargs.get("ExpressionAttributeNames", {}))
        values: dict[str, Any] = dict(kwargs.get("ExpressionAttributeValues", {}))
        matches = self._match(
            table, partition, sort, kwargs["KeyConditionExpression"], names, values
        )
        forward = kwargs.get("ScanIndexForward", True)
        if sort is not None:
            matches.sort(key=lambda item: _scalar(item[sort]), reverse=not forward)
        start: Mapping[str, Any] | None = kwargs.get("ExclusiveStartKey")
        if start is not None and sort is not None:
            after = _scalar(start[sort])
            matches = [
                m
                for m in matches
                if (_scalar(m[sort]) > after if forward else _scalar(m[sort]) < after)
            ]
        limit = kwargs.get("Limit")
        if limit is not None and limit < 1:
            raise client_error(
                "ValidationException", "Limit must be greater than or equal to 1", "Query"
            )
        cap = min(limit or self.page_items, self.page_items)
        page = matches[:cap]
        response: dict[str, Any] = {
            "Items": [
                self._project(item, kwargs.get("ProjectionExpression"), names) for item in page
            ],
            "Count": len(page),
            "ScannedCount": len(page),
            "ResponseMetadata": response_metadata(),
        }
        if len(page) == cap and page:
            last = page[-1]
            key_names = {table.partition, partition} | {
                n for n in (table.sort, sort) if n is not None
            }
            response["LastEvaluatedKey"] = {n: last[n] for n in key_names}
        return cast("QueryOutputTypeDef", response)

    # -- inside ------------------------------------------------------------------------

    @staticmethod
    def _key_schema(schema: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
        partition = next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")
        sort = next((k["AttributeName"] for k in schema if k["KeyType"] == "RANGE"), None)
        return partition, sort

    def _table(self, name: str, operation: str) -> FakeTable:
        table = self.tables.get(name)
        if table is None:
            raise client_error(
                "ResourceNotFoundException", "Requested resource not found", operation
            )
        return table

    @staticmethod
    def _match(
        table: FakeTable,
        partition: str,
        sort: str | None,
        condition: str,
        names: Mapping[str, str],
        values: Mapping[str, Mapping[str, Any]],
    ) -> list[Item]:
        def name_of(token: str) -> str:
            return names[token] if token.startswith("#") else token

        def value_of(token: str) -> Any:
            if token not in values:
                raise client_error(
                    "ValidationException",
                    f"An expression attribute value used in expression is not defined: {token}",
                    "Query",
                )
            return _scalar(values[token])

        # The first AND joins the two key conditions; a BETWEEN's own AND comes later.
        parts = re.split(r"\s+AND\s+", condition, maxsplit=1, flags=re.IGNORECASE)
        head = _PARTITION_CONDITION.match(parts[0])
        if head is None or name_of(head["name"]) != partition:
            raise client_error(
                "ValidationException",
                f"Query condition missed key schema element: {partition}",
                "Query",
            )
        wanted = value_of(head["value"])

        # The sort condition is checked once, before any item is looked at, as
        # DynamoDB validates an expression whether or not anything matches.
        sort_ok: Callable[[Any], bool] = lambda _actual: True  # noqa: E731
        if len(parts) == 2:
            if sort is None:
                raise client_error("ValidationException", "The table has no sort key", "Query")
            begins = _BEGINS_WITH.match(parts[1])
            rule = _SORT_CONDITION.match(parts[1])
            if begins is not None and name_of(begins["name"]) == sort:
                prefix = str(value_of(begins["value"]))
                sort_ok = lambda actual: str(actual).startswith(prefix)  # noqa: E731
            elif rule is None or name_of(rule["name"]) != sort:
                raise client_error(
                    "ValidationException", f"Invalid KeyConditionExpression: {condition}", "Query"
                )
            elif rule["op"] is None:
                low, high = value_of(rule["low"]), value_of(rule["high"])
                if low > high:
                    raise client_error(
                        "ValidationException",
                        "Invalid KeyConditionExpression: The BETWEEN operator requires upper "
                        "bound to be greater than or equal to lower bound",
                        "Query",
                    )
                sort_ok = lambda actual: bool(low <= actual <= high)  # noqa: E731
            else:
                other, compare = value_of(rule["value"]), _COMPARISONS[rule["op"]]
                sort_ok = lambda actual: compare(actual, other)  # noqa: E731

        return [
            item
            for item in table.items.values()
            if partition in item
            and _scalar(item[partition]) == wanted
            and (sort is None or sort in item)
            and (sort is None or sort_ok(_scalar(item[sort])))
        ]

    @staticmethod
    def _project(item: Item, projection: str | None, names: Mapping[str, str] | None) -> Item:
        if not projection:
            return dict(item)
        wanted = [
            (names or {}).get(token.strip(), token.strip()) for token in projection.split(",")
        ]
        return {name: item[name] for name in wanted if name in item}
