"""Fire-and-forget analytics for any grpc.aio service.

Adopt it in a few lines::

    settings = EmitterSettings.from_env(os.environ)
    emitter = Emitter(SqsSink(settings), settings)
    emitter.start()                      # inside the running event loop
    emitter.emit(EventRecord(...))       # in the handler: O(1), never blocks or raises
    await emitter.shutdown()             # after server.stop(grace)

``emit`` only appends plain data to a bounded in-process buffer on the event
loop. Building the protobuf, packing, encoding and the AWS call happen on the
sender thread, woken by size or by linger time; a full buffer drops the
newest event and counts it.
"""

from offpath.emitter.emitter import Emitter, EmitterStats
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sink import EventSink, ExportResult
from offpath.emitter.sqs import SqsSendClient, SqsSink

__all__ = [
    "Emitter",
    "EmitterSettings",
    "EmitterStats",
    "EventRecord",
    "EventSink",
    "ExportResult",
    "SqsSendClient",
    "SqsSink",
]
