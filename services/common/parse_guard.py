"""Requests whose bytes do not parse: INVALID_ARGUMENT and one log line, not a traceback each.

grpc deserialises a request before any servicer code runs; when the bytes are not the method's
message, grpcio logs an ERROR with a traceback and the caller gets UNKNOWN — per message, an
easy way to flood a service's log. :class:`ParseGuard`, the innermost interceptor of every
server, swaps each method's request deserialiser for one that never raises: bytes that do not
parse become an :class:`Unparsable` marker, and the method's behaviour ends the call with
INVALID_ARGUMENT as soon as it meets one (the first request of a unary call, the first bad
message of a stream), writing at most one log line per method every 10 s. What parsed before
it on a stream was handled as usual; nothing of the bad message reaches the servicer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.common.log_limit import LimitedLog

__all__ = ["ParseGuard", "Unparsable"]

log = logging.getLogger("meshenc.grpc")


@dataclass(frozen=True, slots=True)
class Unparsable:
    """Stands for a request whose bytes are not the method's message."""

    size: int
    error: str


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as exc:
            return Unparsable(len(data), str(exc) or type(exc).__name__)

    return parse


class ParseGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring. Servicers' streaming methods must be async generators."""

    def __init__(self) -> None:
        self._log = LimitedLog(log)

    async def _refuse(self, method: str, bad: Unparsable, context: Any) -> None:
        self._log.warning(
            method, "%s: a request of %d bytes does not parse: %s", method, bad.size, bad.error
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {bad.error}"
        )

    def _checked(self, method: str, requests: Any, context: Any) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Unparsable):
                    await self._refuse(method, request, context)
                yield request

        return checked()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        codecs = {
            "request_deserializer": _safe(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def call(request: Any, context: Any) -> Any:
                if isinstance(request, Unparsable):
                    await self._refuse(method, request, context)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(call, **codecs)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def answers(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, Unparsable):
                    await self._refuse(method, request, context)
                async for response in unary_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(answers, **codecs)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def gather(requests: Any, context: Any) -> Any:
                return await stream_unary(self._checked(method, requests, context), context)

            return grpc.stream_unary_rpc_method_handler(gather, **codecs)
        if handler.stream_stream is not None:
            stream_stream = handler.stream_stream

            async def exchange(requests: Any, context: Any) -> AsyncIterator[Any]:
                checked = self._checked(method, requests, context)
                async for response in stream_stream(checked, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(exchange, **codecs)
        return handler
