"""Per-peer limits and message sizes on a real server: ``GrpcServer`` on 127.0.0.1 (in
plaintext, and with mutual TLS and real certificates), whose own health service (a unary
``Check``, a streaming ``Watch``) is the traffic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from services.common.certs import make_certificates
from services.common.grpc_server import MAX_REQUEST_BYTES, GrpcServer, open_channel
from services.common.peer_limits import PeerLimits


async def serving(
    limits: PeerLimits,
    body: Callable[[Any, GrpcServer], Awaitable[None]],
    weigh: Callable[[object], int] | None = None,
) -> None:
    server = GrpcServer({}, limits=limits, weigh=weigh)
    port = await server.start("127.0.0.1:0")
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(body(channel, server), 10.0)
    finally:
        await channel.close()
        await server.stop(0)


async def first_answer(call: Any) -> Any:
    return await anext(aiter(call))


def test_a_peer_gets_so_many_streams_and_no_more(caplog: pytest.LogCaptureFixture) -> None:
    async def body(channel: Any, server: GrpcServer) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
        for watch in watches:  # each is open: it has answered
            assert (await first_answer(watch)).status == health_pb2.HealthCheckResponse.SERVING
        extra = health.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await first_answer(extra)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3" in (info.value.details() or "")
        # A unary call is not a stream; and once a stream ends, its place is free again.
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        watches[0].cancel()
        await asyncio.sleep(0.2)
        again = health.Watch(health_pb2.HealthCheckRequest())
        assert (await first_answer(again)).status == health_pb2.HealthCheckResponse.SERVING
        for watch in [*watches, again]:
            watch.cancel()
        assert server.limiter.refused["streams"] == 1
        # The server has seen every cancellation before it stops: a stream it still serves
        # when stopped is cancelled under its handler, which gRPC logs as an error.
        for _ in range(100):
            if server.limiter.open_streams == 0:
                break
            await asyncio.sleep(0.02)
        assert server.limiter.open_streams == 0

    with caplog.at_level(logging.WARNING):
        asyncio.run(serving(PeerLimits(max_streams=3), body))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_peer_sending_faster_than_its_rate_is_cut_off_then_served_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = PeerLimits(max_messages_per_second=10.0)  # a bucket of 20 messages

    async def body(channel: Any, server: GrpcServer) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        codes = []
        for _ in range(60):  # a flood, far faster than 10 a second
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert 20 <= codes.count(grpc.StatusCode.OK) < 30  # the burst, and what refilled
        await asyncio.sleep(0.3)  # three messages' worth
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert server.limiter.refused["messages"] == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)

    with caplog.at_level(logging.WARNING):
        asyncio.run(serving(limits, body))
    lines = [r for r in caplog.records if "messages/s" in r.getMessage()]
    assert len(lines) == 1  # one line, however many calls were refused


def test_a_request_weighs_what_the_server_says_but_never_more_than_a_burst() -> None:
    """A request that carries many messages (a mesh batch) counts each; one heavier than the
    whole bucket counts as the whole bucket, so that it is not refused for ever."""

    def weigh(request: object) -> int:
        assert isinstance(request, health_pb2.HealthCheckRequest)
        return 3 if request.service else 1000

    async def body(channel: Any, server: GrpcServer) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # takes all 10
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="x"), timeout=5)  # 3
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.limiter.refused["messages"] == 1

    asyncio.run(serving(PeerLimits(max_messages_per_second=5.0), body, weigh=weigh))


def test_a_request_beyond_the_size_limit_is_refused_by_server_and_channel() -> None:
    huge = b"\x0a" + bytes([0x80, 0x80, 0x50]) + b"x" * (MAX_REQUEST_BYTES + 10)

    async def body(channel: Any, server: GrpcServer) -> None:
        # A channel without the limit sends it; the server refuses it before parsing.
        port = server.port
        raw = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]
        )
        try:
            check = raw.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(huge, timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await raw.close()
        # A meshenc channel does not even send it.
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(huge, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await health_check(channel)

    asyncio.run(serving(PeerLimits(), body))


async def health_check(channel: Any) -> None:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_under_mutual_tls_each_identity_has_its_own_budget(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", ["server", "e1", "e2"])

    async def main() -> None:
        server = GrpcServer({}, limits=PeerLimits(max_streams=1), tls=certs.files("server"))
        port = await server.start("127.0.0.1:0")
        channels = {
            name: open_channel(f"127.0.0.1:{port}", tls=certs.files(name), server_name="server")
            for name in ("e1", "e2")
        }
        try:
            watches = []
            for name, expected in (
                ("e1", "SERVING"),
                ("e1", "RESOURCE_EXHAUSTED"),
                ("e2", "SERVING"),
            ):
                watch = health_pb2_grpc.HealthStub(channels[name]).Watch(
                    health_pb2.HealthCheckRequest()
                )
                watches.append(watch)
                try:
                    answer = await first_answer(watch)
                    got = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.aio.AioRpcError as exc:
                    got = exc.code().name
                assert got == expected, name
            for watch in watches:
                watch.cancel()
        finally:
            for channel in channels.values():
                await channel.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 10.0))
