"""What every fake AWS client shares: a journal of the calls made to it and
a script of faults to inject into the next calls of an operation."""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

# An injected outcome: an exception to raise, or a function of the request
# that returns a response to use instead of the fake's own (or None to let
# the fake answer as usual: a way to observe or to delay a call).
Outcome = BaseException | Callable[[Mapping[str, Any]], Any]

_request_ids = itertools.count(1)


def client_error(code: str, message: str, operation: str, *, status: int = 400) -> ClientError:
    """The exception botocore raises for an error response."""
    metadata = response_metadata()
    metadata.update(HTTPStatusCode=status, HostId="fake")
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata},
        operation,
    )


@dataclass(frozen=True, slots=True)
class Call:
    """One call: the operation (the client method's name) and a deep copy of
    its arguments as they were when it was made."""

    operation: str
    request: dict[str, Any]


class CallJournal:
    """The calls made to a fake, in order, and faults scripted per operation."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._script: defaultdict[str, deque[Outcome]] = defaultdict(deque)

    def inject(self, operation: str, *outcomes: Outcome) -> None:
        """The next ``len(outcomes)`` calls of ``operation`` get these outcomes,
        in order; later calls are answered normally again."""
        self._script[operation].extend(outcomes)

    def of(self, operation: str) -> list[dict[str, Any]]:
        """The requests of every call of ``operation``, in order."""
        return [call.request for call in self.calls if call.operation == operation]

    @property
    def operations(self) -> list[str]:
        """The operations called, in order (to check the order of effects)."""
        return [call.operation for call in self.calls]

    def record(self, operation: str, request: Mapping[str, Any]) -> Any:
        """Journal a call and play its scripted outcome: raises what was
        scripted, returns a scripted response, or None to answer normally."""
        self.calls.append(Call(operation, copy.deepcopy(dict(request))))
        script = self._script.get(operation)
        if not script:
            return None
        outcome = script.popleft()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome(request)


def response_metadata() -> Any:
    """The ResponseMetadata every AWS response carries."""
    return {
        "RequestId": f"fake-{next(_request_ids)}",
        "HTTPStatusCode": 200,
        "HTTPHeaders": {},
        "RetryAttempts": 0,
    }
