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

import math
import operator
import re
import threading
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
        PutItemInputTypeDef,
        PutItemOutputTypeDef,
        QueryInputTypeDef,
        QueryOutputTypeDef,
        TransactWriteItemsInputTypeDef,
        TransactWriteItemsOutputTypeDef,
        UpdateTimeToLiveInputTypeDef,
        UpdateTimeToLiveOutputTypeDef,
    )

Item = dict[str, Any]  # attribute name -> AttributeValue ({"S": ...}, {"N": ...}, ...)

_MAX_BATCH_WRITE = 25
_MAX_TRANSACTION = 100
_CONDITION_TERM = re.compile(
    r"^\s*(?:(?P<fn>attribute_not_exists|attribute_exists)\(\s*(?P<fname>[#\w]+)\s*\)"
    r"|(?P<name>[#\w]+)\s*(?P<op><>|<=|>=|=|<|>)\s*(?P<value>:\w+))\s*$",
    re.IGNORECASE,
)
_SET_CLAUSE = re.compile(
    r"^\s*(?P<name>[#\w]+)\s*=\s*(?:if_not_exists\(\s*(?P<same>[#\w]+)\s*,\s*"
    r"(?P<default>:\w+)\s*\)|(?P<value>:\w+))\s*$",
    re.IGNORECASE,
)
_ADD_CLAUSE = re.compile(r"^\s*(?P<name>[#\w]+)\s+(?P<value>:\w+)\s*$")
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


def item_size(item: Mapping[str, Any]) -> int:
    """An item's size in bytes as DynamoDB bills it: each attribute's name
    plus its value (strings and binaries by length, numbers about one byte
    per two significant digits plus one, maps and lists 3 bytes plus their
    elements plus one byte each)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Mapping[str, Any]) -> int:
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "B":
        return len(raw)
    if kind == "N":
        digits = str(raw).lstrip("-").replace(".", "").strip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in raw)
    if kind in ("SS", "BS"):
        return sum(len(v.encode() if isinstance(v, str) else v) for v in raw)
    if kind == "NS":
        return sum(_value_size({"N": v}) for v in raw)
    raise ValueError(f"unknown attribute type {kind}")


def write_units(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> float:
    """Write units of one standard write: the larger of the item's sizes
    before and after, in 1 KB units rounded up (at least one)."""
    size = max(item_size(before or {}), item_size(after or {}))
    return float(max(1, math.ceil(size / 1024)))


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

    def __init__(
        self,
        *,
        page_items: int = 1000,
        read_hook: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.journal = CallJournal()
        self.tables: dict[str, FakeTable] = {}
        self.page_items = page_items
        # Called with the operation and its request on the caller's thread at
        # every GetItem and Query, once journaled and before it is answered:
        # a test makes reads slow (a sleep, a wait for an event) or watches them.
        self.read_hook = read_hook
        self._unprocessed: deque[int | None] = deque()
        # Conditional writes from several threads (the store's puts) check
        # and write as one step, as DynamoDB does per item.
        self._lock = threading.Lock()

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

    def put_item(self, **kwargs: Unpack[PutItemInputTypeDef]) -> PutItemOutputTypeDef:
        """``PutItem`` with an optional ``ConditionExpression`` (terms
        ``attribute_exists(x)``, ``attribute_not_exists(x)`` or ``x <op> :v``
        joined by ``OR``); ``ConsumedCapacity`` in write units by item size
        when asked, a refused write charged too, as DynamoDB does."""
        scripted = self.journal.record("put_item", kwargs)
        if scripted is not None:
            return cast("PutItemOutputTypeDef", scripted)
        table = self._table(kwargs["TableName"], "PutItem")
        item = dict(kwargs["Item"])
        key = table.key_of(item)
        with self._lock:
            before = table.items.get(key)
            units = write_units(before, item)
            condition = kwargs.get("ConditionExpression")
            if condition is not None and not _holds(
                condition,
                before,
                kwargs.get("ExpressionAttributeNames", {}),
                cast(
                    "Mapping[str, Mapping[str, Any]]", kwargs.get("ExpressionAttributeValues", {})
                ),
                "PutItem",
            ):
                error = client_error(
                    "ConditionalCheckFailedException", "The conditional request failed", "PutItem"
                )
                if kwargs.get("ReturnConsumedCapacity", "NONE") != "NONE":
                    error.response["ConsumedCapacity"] = {  # type: ignore[typeddict-unknown-key]
                        "TableName": table.name,
                        "CapacityUnits": units,
                    }
                raise error
            table.items[key] = item
        response: dict[str, Any] = {"ResponseMetadata": response_metadata()}
        if kwargs.get("ReturnConsumedCapacity", "NONE") != "NONE":
            response["ConsumedCapacity"] = {"TableName": table.name, "CapacityUnits": units}
        return cast("PutItemOutputTypeDef", response)

    def transact_write_items(
        self, **kwargs: Unpack[TransactWriteItemsInputTypeDef]
    ) -> TransactWriteItemsOutputTypeDef:
        """``TransactWriteItems`` of ``Update`` and ``Put`` actions, all or
        nothing: a failed condition cancels the whole transaction with
        ``CancellationReasons`` in request order, as DynamoDB does. Updates
        take ``SET x = :v`` / ``SET x = if_not_exists(x, :v)`` and ``ADD x
        :n``. Each action costs twice a standard write (by item size)."""
        scripted = self.journal.record("transact_write_items", kwargs)
        if scripted is not None:
            return cast("TransactWriteItemsOutputTypeDef", scripted)
        actions = list(kwargs["TransactItems"])
        if not 1 <= len(actions) <= _MAX_TRANSACTION:
            raise client_error(
                "ValidationException",
                f"Member must have length less than or equal to {_MAX_TRANSACTION}",
                "TransactWriteItems",
            )
        with self._lock:
            planned: list[tuple[FakeTable, tuple[Any, ...], Item]] = []
            reasons: list[dict[str, str]] = []
            units: dict[str, float] = {}
            for action in actions:
                ((kind, raw),) = action.items()
                request = cast("dict[str, Any]", raw)
                table = self._table(request["TableName"], "TransactWriteItems")
                key_item = request["Item"] if kind == "Put" else request["Key"]
                key = table.key_of(key_item)
                if any(t is table and k == key for t, k, _ in planned):
                    raise client_error(
                        "ValidationException",
                        "Transaction request cannot include multiple operations on one item",
                        "TransactWriteItems",
                    )
                before = table.items.get(key)
                names = request.get("ExpressionAttributeNames", {})
                values = request.get("ExpressionAttributeValues", {})
                condition = request.get("ConditionExpression")
                ok = condition is None or _holds(
                    condition, before, names, values, "TransactWriteItems"
                )
                if kind == "Put":
                    after = dict(request["Item"])
                elif kind == "Update":
                    after = _updated(
                        before, dict(key_item), request["UpdateExpression"], names, values
                    )
                else:
                    raise client_error(
                        "ValidationException", f"{kind} is not supported here", "TransactWriteItems"
                    )
                reasons.append(
                    {"Code": "None"}
                    if ok
                    else {
                        "Code": "ConditionalCheckFailed",
                        "Message": "The conditional request failed",
                    }
                )
                planned.append((table, key, after))
                units[table.name] = units.get(table.name, 0.0) + 2 * write_units(before, after)
            if any(r["Code"] != "None" for r in reasons):
                error = client_error(
                    "TransactionCanceledException",
                    "Transaction cancelled, please refer cancellation reasons for specific "
                    f"reasons [{', '.join(r['Code'] for r in reasons)}]",
                    "TransactWriteItems",
                )
                error.response["CancellationReasons"] = cast("Any", reasons)
                raise error
            for table, key, after in planned:
                table.items[key] = after
        response: dict[str, Any] = {"ResponseMetadata": response_metadata()}
        if kwargs.get("ReturnConsumedCapacity", "NONE") != "NONE":
            response["ConsumedCapacity"] = [
                {"TableName": name, "CapacityUnits": value} for name, value in units.items()
            ]
        return cast("TransactWriteItemsOutputTypeDef", response)

    def get_item(self, **kwargs: Unpack[GetItemInputTypeDef]) -> GetItemOutputTypeDef:
        scripted = self.journal.record("get_item", kwargs)
        if self.read_hook is not None:
            self.read_hook("get_item", kwargs)
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
        if self.read_hook is not None:
            self.read_hook("query", kwargs)
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


def _holds(
    condition: str,
    item: Mapping[str, Any] | None,
    names: Mapping[str, str],
    values: Mapping[str, Mapping[str, Any]],
    operation: str,
) -> bool:
    """Whether ``condition`` (terms joined by OR) holds for ``item`` (None:
    no item, where every attribute is absent)."""
    present = item or {}
    for term in re.split(r"\s+OR\s+", condition.strip(), flags=re.IGNORECASE):
        match = _CONDITION_TERM.match(term)
        if match is None:
            raise client_error(
                "ValidationException", f"Invalid ConditionExpression: {condition}", operation
            )
        if match["fn"] is not None:
            name = names.get(match["fname"], match["fname"])
            exists = name in present
            if exists == (match["fn"].lower() == "attribute_exists"):
                return True
            continue
        name = names.get(match["name"], match["name"])
        if name not in present:
            continue
        actual, other = _scalar(present[name]), _scalar(values[match["value"]])
        compare = operator.ne if match["op"] == "<>" else _COMPARISONS[match["op"]]
        if compare(actual, other):
            return True
    return False


def _updated(
    item: Mapping[str, Any] | None,
    key: Item,
    expression: str,
    names: Mapping[str, str],
    values: Mapping[str, Mapping[str, Any]],
) -> Item:
    """``item`` (or a new one with ``key``) after ``SET`` and ``ADD`` clauses."""
    result: Item = dict(item) if item is not None else dict(key)
    sections = re.split(r"\b(SET|ADD)\b", expression, flags=re.IGNORECASE)
    for verb, body in zip(sections[1::2], sections[2::2], strict=True):
        for clause in (c for c in body.split(",") if c.strip()):
            if verb.upper() == "SET":
                match = _SET_CLAUSE.match(clause)
                if match is None:
                    raise client_error(
                        "ValidationException", f"Invalid UpdateExpression: {expression}", "Update"
                    )
                name = names.get(match["name"], match["name"])
                if match["value"] is not None:
                    result[name] = dict(values[match["value"]])
                elif name not in result:
                    result[name] = dict(values[match["default"]])
            else:
                match = _ADD_CLAUSE.match(clause)
                if match is None:
                    raise client_error(
                        "ValidationException", f"Invalid UpdateExpression: {expression}", "Update"
                    )
                name = names.get(match["name"], match["name"])
                amount = Decimal(values[match["value"]]["N"])
                current = Decimal(result[name]["N"]) if name in result else Decimal(0)
                result[name] = {"N": str(current + amount)}
    return result
