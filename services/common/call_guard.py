"""Wrapping a gRPC method handler with checks, whatever the method's shape.

grpc.aio hands a server interceptor the method's handler, one of four shapes (unary or stream
in, unary or stream out), each with its own behaviour signature. The interceptors that guard
the services (:class:`~services.common.tls.IdentityRequired`,
:class:`~services.common.peer_limits.PeerLimiter`,
:class:`~services.common.parse_guard.ParseGuard`) each need the same three places to hook in:
once per call before anything runs (``before``), once per request message before the servicer
sees it (``each``), and around a call that streams in either direction (``hold_stream``); and
:class:`~services.common.stream_end.StreamEnd` hands a stream-in call's behaviour a
context of its own (``stream_context``).
:func:`guard` builds the wrapped handler; a hook ends the call by ``context.abort``.
A streaming behaviour that is an async generator stays one (so the tracing interceptors see the
stream); one that answers with ``context.write`` (grpc's own health ``Watch``) stays a
coroutine.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

__all__ = ["Before", "Each", "HoldStream", "StreamContext", "guard"]

Before = Callable[[Any], Awaitable[None]]
"""``before(context)``: runs once when the call starts."""
Each = Callable[[Any, Any], Awaitable[None]]
"""``each(request, context)``: runs for every request message before the servicer gets it."""
HoldStream = Callable[[Any], AbstractAsyncContextManager[None]]
"""``hold_stream(context)``: entered before a streaming call runs, left when it ends."""
StreamContext = Callable[[Any, Any], Any]
"""``stream_context(context, requests)``: the context a stream-in call's behaviour gets."""

_KEEP: Any = object()


def guard(
    handler: Any,
    *,
    before: Before | None = None,
    each: Each | None = None,
    hold_stream: HoldStream | None = None,
    stream_context: StreamContext | None = None,
    write_responses: bool = False,
    request_deserializer: Any = _KEEP,
) -> Any:
    """``handler`` with the hooks added; ``request_deserializer`` replaces the handler's.

    ``write_responses``: a behaviour that streams out becomes a coroutine that writes what the
    inner one yields (``context.write``) and closes it, whatever ends the call, in the call's
    own task; grpc would otherwise leave an abandoned generator to the garbage collector, which
    closes it in another context (and the tracing interceptor's span then fails to detach,
    with an ERROR and a traceback, per call a client cancels).
    """

    def inner(context: Any, requests: Any) -> Any:
        return context if stream_context is None else stream_context(context, requests)

    async def start(context: Any) -> None:
        if before is not None:
            await before(context)

    async def check(request: Any, context: Any) -> None:
        if each is not None:
            await each(request, context)

    def held(context: Any) -> AbstractAsyncContextManager[None]:
        return hold_stream(context) if hold_stream is not None else contextlib.nullcontext()

    def checked(requests: Any, context: Any) -> AsyncIterator[Any]:
        if each is None:
            return requests  # type: ignore[no-any-return]

        async def every() -> AsyncIterator[Any]:
            async for request in requests:
                await check(request, context)
                yield request

        return every()

    codecs = {
        "request_deserializer": handler.request_deserializer
        if request_deserializer is _KEEP
        else request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def call(request: Any, context: Any) -> Any:
            await start(context)
            await check(request, context)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(call, **codecs)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream
        if not inspect.isasyncgenfunction(unary_stream):  # it answers with context.write

            async def written(request: Any, context: Any) -> None:
                await start(context)
                async with held(context):
                    await check(request, context)
                    await unary_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(written, **codecs)
        if write_responses:

            async def writing(request: Any, context: Any) -> None:
                await start(context)
                async with held(context):
                    await check(request, context)
                    await _write_all(unary_stream(request, context), context)

            return grpc.unary_stream_rpc_method_handler(writing, **codecs)

        async def answers(request: Any, context: Any) -> AsyncIterator[Any]:
            await start(context)
            async with held(context):
                await check(request, context)
                async with contextlib.aclosing(unary_stream(request, context)) as responses:
                    async for response in responses:
                        yield response

        return grpc.unary_stream_rpc_method_handler(answers, **codecs)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def gather(requests: Any, context: Any) -> Any:
            await start(context)
            async with held(context):
                return await stream_unary(checked(requests, context), inner(context, requests))

        return grpc.stream_unary_rpc_method_handler(gather, **codecs)
    if handler.stream_stream is not None:
        stream_stream = handler.stream_stream
        if not inspect.isasyncgenfunction(stream_stream):  # it answers with context.write

            async def converse(requests: Any, context: Any) -> None:
                await start(context)
                async with held(context):
                    await stream_stream(checked(requests, context), inner(context, requests))

            return grpc.stream_stream_rpc_method_handler(converse, **codecs)
        if write_responses:

            async def writing_back(requests: Any, context: Any) -> None:
                await start(context)
                async with held(context):
                    responses = stream_stream(checked(requests, context), inner(context, requests))
                    await _write_all(responses, context)

            return grpc.stream_stream_rpc_method_handler(writing_back, **codecs)

        async def exchange(requests: Any, context: Any) -> AsyncIterator[Any]:
            await start(context)
            async with held(context):
                responses = stream_stream(checked(requests, context), inner(context, requests))
                async with contextlib.aclosing(responses) as each_response:
                    async for response in each_response:
                        yield response

        return grpc.stream_stream_rpc_method_handler(exchange, **codecs)
    return handler


async def _write_all(responses: Any, context: Any) -> None:
    """Write every response of the async generator ``responses``; close it in this task."""
    async with contextlib.aclosing(responses):
        async for response in responses:
            await context.write(response)
