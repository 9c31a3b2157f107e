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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.common.call_guard import guard
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
    """See the module docstring."""

    def __init__(self) -> None:
        self._log = LimitedLog(log)

    async def _refuse(self, method: str, bad: Unparsable, context: Any) -> None:
        self._log.warning(
            method, "%s: a request of %d bytes does not parse: %s", method, bad.size, bad.error
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {bad.error}"
        )

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        async def each(request: Any, context: Any) -> None:
            if isinstance(request, Unparsable):
                await self._refuse(method, request, context)

        return guard(handler, each=each, request_deserializer=_safe(handler.request_deserializer))
