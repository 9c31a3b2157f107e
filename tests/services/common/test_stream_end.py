"""A stream the server ends while its client is still sending: the client gets the status.

A real ``GrpcServer`` on 127.0.0.1; the stream is its own reflection service
(``ServerReflectionInfo``, stream in and out), sent bytes that do not parse followed by more.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from services.common.grpc_server import GrpcServer, open_channel

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
GARBAGE = b"\xff\xff\xff\xff"  # a truncated varint: parses as no message


def test_a_client_still_sending_gets_invalid_argument_not_internal() -> None:
    async def main() -> collections.Counter[str]:
        server = GrpcServer({})
        port = await server.start("127.0.0.1:0")
        channel = open_channel(f"127.0.0.1:{port}")
        codes: collections.Counter[str] = collections.Counter()
        try:
            method = channel.stream_stream(REFLECTION)
            for _ in range(50):
                call = method(iter([GARBAGE] * 10), timeout=5)
                try:
                    async for _ in call:
                        pass
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
        finally:
            await channel.close()
            await server.stop(0)
        return codes

    # Without the drain, grpc answered nearly all of these INTERNAL (a GOAWAY); with it, the
    # drain's time bound may still run out now and then on a machine this busy.
    codes = asyncio.run(main())
    assert set(codes) <= {"INVALID_ARGUMENT", "INTERNAL"}, codes
    assert codes["INVALID_ARGUMENT"] >= 45, codes
