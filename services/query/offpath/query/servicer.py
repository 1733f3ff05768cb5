"""The QueryService servicer: validate, search, generate, answer.

Analytics are not its business: the server's
:class:`~offpath.emitter.AnalyticsInterceptor` records every call (its event
id, status code and duration) and hands the event on before the reply
leaves. The handler only adds what it alone knows — the query, the matched
skills, the model and its token count — to the call's analytics context
(:func:`~offpath.emitter.current_rpc`), and returns that context's event id
in the response. The query goes in as asked (a rejected one cut to a short
prefix); the emitter's sender redacts it before it leaves the process. With
analytics off there is no interceptor, the context is a no-op, and the event
id is empty.
"""

from __future__ import annotations

import time

import grpc
import structlog

from offpath.emitter import current_rpc
from offpath.emitter.redact import rejected_prefix
from offpath.query.engine import SkillIndex
from offpath.query.generator import Generator
from offpath.v1 import analytics_pb2, query_pb2, query_pb2_grpc

log = structlog.get_logger("offpath.query")

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name

MAX_QUERY_CHARS = 2048
DEFAULT_TOP_K = 3
MAX_TOP_K = 20


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Answers questions about the CV from the skills index."""

    def __init__(self, index: SkillIndex, generator: Generator) -> None:
        self._index = index
        self._generator = generator

    async def Query(
        self,
        request: query_pb2.QueryRequest,
        context: grpc.aio.ServicerContext[query_pb2.QueryRequest, query_pb2.QueryResponse],
    ) -> query_pb2.QueryResponse:
        t0 = time.perf_counter_ns()
        rpc = current_rpc()
        query = request.query.strip()
        top_k = request.top_k if request.HasField("top_k") and request.top_k else DEFAULT_TOP_K
        problem = _validate(query, top_k)
        if problem is not None:
            # A rejected query's event shows what was asked, but only its
            # start: a body of any size must not be carried whole.
            rpc.set(query=rejected_prefix(query))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        rpc.set(query=query)
        try:
            matches = self._index.search(query, top_k)
            generated = self._generator.generate(query, matches)
            skills = tuple((m.skill.name, m.score) for m in matches)
            rpc.set(matched_skills=skills, model=generated.model, token_count=generated.token_count)
            response = query_pb2.QueryResponse(
                answer=generated.text,
                matched_skills=[
                    analytics_pb2.MatchedSkill(name=name, score=score) for name, score in skills
                ],
                model=generated.model,
                token_count=generated.token_count,
                event_id=rpc.event_id,
            )
            response.processing_time.FromNanoseconds(time.perf_counter_ns() - t0)
        except Exception:
            # A bug or a failing generator: the client gets INTERNAL with the
            # event id to quote, never the exception's text; the log has both.
            log.exception("query_failed", event_id=rpc.event_id)
            suffix = f" (event {rpc.event_id})" if rpc.event_id else ""
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error{suffix}")
        return response


def _validate(query: str, top_k: int) -> str | None:
    if not query:
        return "query must not be empty"
    if len(query) > MAX_QUERY_CHARS:
        return f"query is {len(query)} characters; at most {MAX_QUERY_CHARS} are allowed"
    if not 1 <= top_k <= MAX_TOP_K:
        return f"top_k is {top_k}; it must be between 1 and {MAX_TOP_K}"
    return None
