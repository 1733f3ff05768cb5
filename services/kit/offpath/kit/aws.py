"""AWS clients from the standard configuration chain.

Region, credentials and endpoint come from the standard variables and files
(``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SQS``, profiles, ...),
so the same code talks to AWS, LocalStack or the local moto endpoint. Only the
resource names are ours (``OFFPATH_*``, read by each component's settings).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

import boto3
from botocore.config import Config

from offpath.kit.settings import SettingsError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

# Transport-level throttling and 5xx are botocore's job; "standard" retries
# with jittered backoff. Parameter validation is skipped: our own code builds
# every request, and it is a measurable part of each call's CPU cost.
_RETRY_MODE: Final = "standard"
_MAX_ATTEMPTS = 3


def client_config(
    *,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    max_attempts: int = _MAX_ATTEMPTS,
    max_pool_connections: int = 10,
) -> Config:
    """botocore configuration shared by every offpath client."""
    return Config(
        retries={"mode": _RETRY_MODE, "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        parameter_validation=False,
        max_pool_connections=max_pool_connections,
    )


def _session() -> boto3.session.Session:
    # AWS_REGION is what the other AWS SDKs read first; botocore itself only
    # reads AWS_DEFAULT_REGION and profiles, so honour AWS_REGION here.
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
    if session.region_name is None:
        raise SettingsError(
            "no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile)"
        )
    return session


def check_config() -> None:
    """Raise :class:`SettingsError` now when no client could be made (no
    region): a process that hands AWS calls to another one checks here, at
    start-up, what that one would find out too late."""
    _session()


def sqs_client(config: Config | None = None) -> SQSClient:
    """An SQS client; each thread that uses it concurrently should own one."""
    client: Any = _session().client("sqs", config=config or client_config())
    return client  # type: ignore[no-any-return]


def dynamodb_client(config: Config | None = None) -> DynamoDBClient:
    """A DynamoDB (low-level) client."""
    client: Any = _session().client("dynamodb", config=config or client_config())
    return client  # type: ignore[no-any-return]
