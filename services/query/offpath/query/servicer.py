"""The QueryService servicer: answer at once, record fire-and-forget.

The handler validates, searches, generates and replies. Its only analytics
work is building an :class:`EventRecord` and ``emit``-ting it in ``finally``
(O(1), never blocks, never raises), for failed requests too, with the status
code the client saw. The event id is minted first so the response (or, on an
error, the trailing metadata ``offpath-event-id``) carries it. (The
``blocking`` mode instead awaits the SQS call before replying; it exists only
so the benchmark can show the cost offpath removes.)
"""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from offpath.emitter import Emitter, EventRecord
from offpath.kit.ids import new_id
from offpath.query.blocking import BlockingRecorder
from offpath.query.engine import SkillIndex
from offpath.query.generator import Generator
from offpath.v1 import analytics_pb2, query_pb2, query_pb2_grpc

log = structlog.get_logger("offpath.query")

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
METHOD = f"/{SERVICE_NAME}/Query"
EVENT_ID_METADATA = "offpath-event-id"

MAX_QUERY_CHARS = 2048
DEFAULT_TOP_K = 3
MAX_TOP_K = 20


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Answers questions about the CV from the skills index."""

    def __init__(
        self,
        index: SkillIndex,
        generator: Generator,
        emitter: Emitter | None,
        blocking: BlockingRecorder | None = None,
    ) -> None:
        self._index = index
        self._generator = generator
        self._emitter = emitter
        self._blocking = blocking

    async def Query(
        self,
        request: query_pb2.QueryRequest,
        context: grpc.aio.ServicerContext[query_pb2.QueryRequest, query_pb2.QueryResponse],
    ) -> query_pb2.QueryResponse:
        started_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        event_id = new_id()
        query = request.query.strip()
        status = grpc.StatusCode.OK
        skills: tuple[tuple[str, float], ...] = ()
        model = ""
        tokens = 0
        try:
            top_k = request.top_k if request.HasField("top_k") and request.top_k else DEFAULT_TOP_K
            problem = _validate(query, top_k)
            if problem is not None:
                status = grpc.StatusCode.INVALID_ARGUMENT
                context.set_trailing_metadata(((EVENT_ID_METADATA, event_id),))
                await context.abort(status, problem)
            matches = self._index.search(query, top_k)
            generated = self._generator.generate(query, matches)
            skills = tuple((m.skill.name, m.score) for m in matches)
            model, tokens = generated.model, generated.token_count
            elapsed_ns = time.perf_counter_ns() - t0
            response = query_pb2.QueryResponse(
                answer=generated.text,
                matched_skills=[
                    analytics_pb2.MatchedSkill(name=name, score=score) for name, score in skills
                ],
                model=model,
                token_count=tokens,
                event_id=event_id,
            )
            response.processing_time.FromNanoseconds(elapsed_ns)
            return response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            # The client went away (or its deadline passed): record that.
            status = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL
            log.exception("query_failed", event_id=event_id)
            context.set_trailing_metadata(((EVENT_ID_METADATA, event_id),))
            await context.abort(status, f"internal error (event {event_id})")
        finally:
            if self._emitter is not None or self._blocking is not None:
                record = EventRecord(
                    event_id=event_id,
                    occurred_at_ns=started_ns,
                    service=SERVICE_NAME,
                    method=METHOD,
                    query=query,
                    matched_skills=skills,
                    processing_ns=time.perf_counter_ns() - t0,
                    model=model,
                    token_count=tokens,
                    status_code=status.value[0],
                )
                if self._emitter is not None:
                    self._emitter.emit(record)
                elif self._blocking is not None:
                    await self._blocking.send(record)


def _validate(query: str, top_k: int) -> str | None:
    if not query:
        return "query must not be empty"
    if len(query) > MAX_QUERY_CHARS:
        return f"query is {len(query)} characters; at most {MAX_QUERY_CHARS} are allowed"
    if not 1 <= top_k <= MAX_TOP_K:
        return f"top_k is {top_k}; it must be between 1 and {MAX_TOP_K}"
    return None
