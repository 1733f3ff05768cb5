"""Fire-and-forget analytics for any grpc.aio service.

Adopt it in a few lines::

    analytics = Analytics.from_env()           # OFFPATH_EMIT_*, OFFPATH_SQS_*, AWS_* settings
    server = grpc.aio.server(interceptors=[analytics.interceptor])
    await analytics.start()                    # inside the running loop, before serving
    current_rpc().set(query=text, model=name)  # in a handler: its own fields, if any
    await analytics.shutdown()                 # after server.stop(grace): drain

The interceptor records one event per RPC (method, status code the client
saw, duration, an event id it also puts in the reply's trailing metadata
``offpath-event-id``) and hands it to ``emit`` before the reply leaves.
``emit`` is O(1) and never blocks or raises: the record leaves as plain data
(to a sender process by default, ``OFFPATH_EMIT_SENDER=thread`` for a sender
thread), and building the protobuf, packing, encoding and the AWS call happen
there, woken by size or by linger time; what cannot be buffered is dropped
and counted.
"""

from offpath.emitter.analytics import Analytics
from offpath.emitter.emitter import Emitter, EmitterStats
from offpath.emitter.interceptor import EVENT_ID_METADATA, AnalyticsInterceptor, Recorder
from offpath.emitter.record import EventRecord
from offpath.emitter.rpc import RpcAnalytics, current_rpc
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sink import EventSink, ExportResult
from offpath.emitter.sqs import SqsSendClient, SqsSink

__all__ = [
    "EVENT_ID_METADATA",
    "Analytics",
    "AnalyticsInterceptor",
    "Emitter",
    "EmitterSettings",
    "EmitterStats",
    "EventRecord",
    "EventSink",
    "ExportResult",
    "Recorder",
    "RpcAnalytics",
    "SqsSendClient",
    "SqsSink",
    "current_rpc",
]
