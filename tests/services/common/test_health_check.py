"""``meshenc health-check`` (the ``helm test`` hook's command) against real gRPC servers.

Each test starts a real :class:`GrpcServer` on 127.0.0.1 with a free port in its own event loop
and runs the command, through click's runner in a worker thread or as a real process, while
the server serves. The server carries no application servicer: the names it is given exist
only as health entries, which is all the command asks about. Nothing else is stood in for.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from meshenc.cli.main import cli
from meshenc.local.ports import free_ports
from services.common.grpc_server import GrpcServer
from services.common.health_check import EXIT_NO_ANSWER, EXIT_NOT_SERVING, EXIT_SERVING

T = TypeVar("T")

SERVICE = "meshenc.v1.EncoderMesh"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def invoke(*args: str) -> Result:
    """``meshenc health-check ARGS`` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(cli, ["health-check", *args])


async def with_server(scenario: Callable[[GrpcServer, str], Awaitable[T]]) -> T:
    """Run ``scenario(server, address)`` while a real server serves ``SERVICE``; stop it after."""
    server = GrpcServer({SERVICE: lambda _server: None})
    port = await server.start("127.0.0.1:0")
    try:
        return await scenario(server, f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=0.5)


def test_serving_server_and_service_exit_zero() -> None:
    async def scenario(_server: GrpcServer, address: str) -> tuple[Result, Result]:
        whole = await asyncio.to_thread(invoke, address)
        named = await asyncio.to_thread(invoke, address, SERVICE)
        return whole, named

    whole, named = run(with_server(scenario))
    assert whole.exit_code == EXIT_SERVING, whole.output
    assert whole.stdout.strip().endswith("(server): SERVING")
    assert named.exit_code == EXIT_SERVING, named.output
    assert f"{SERVICE}: SERVING" in named.stdout


def test_service_reported_not_serving_exits_one() -> None:
    async def scenario(server: GrpcServer, address: str) -> tuple[Result, Result]:
        await server.set_serving(SERVICE, False)
        named = await asyncio.to_thread(invoke, address, SERVICE)
        whole = await asyncio.to_thread(invoke, address)
        return named, whole

    named, whole = run(with_server(scenario))
    assert named.exit_code == EXIT_NOT_SERVING
    assert f"{SERVICE}: NOT_SERVING" in named.stderr
    # Health is per service: the server as a whole still serves.
    assert whole.exit_code == EXIT_SERVING, whole.output


def test_unknown_service_exits_one_and_says_so() -> None:
    async def scenario(_server: GrpcServer, address: str) -> Result:
        return await asyncio.to_thread(invoke, address, "meshenc.v1.NoSuchService")

    result = run(with_server(scenario))
    assert result.exit_code == EXIT_NOT_SERVING
    assert "meshenc.v1.NoSuchService: does not know the service" in result.stderr


def test_nothing_listening_exits_three() -> None:
    (port,) = free_ports(1)
    result = invoke(f"127.0.0.1:{port}", "--timeout", "5")
    assert result.exit_code == EXIT_NO_ANSWER
    assert "cannot reach the server" in result.stderr


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP socket that accepts connections (in the kernel) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_silent_server_exits_three_after_the_timeout(silent_listener: str) -> None:
    result = invoke(silent_listener, SERVICE, "--timeout", "0.5")
    assert result.exit_code == EXIT_NO_ANSWER
    assert "no answer within 0.5 s" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["localhost"],
        ["localhost:0"],
        ["localhost:65536"],
        [":7400"],
        ["localhost:7400", "--timeout", "0"],
        ["localhost:7400", "--timeout", "soon"],
    ],
    ids=["no-port", "port-0", "port-too-big", "no-host", "zero-timeout", "word-timeout"],
)
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr


def test_tls_files_go_together_and_must_exist(tmp_path: Path) -> None:
    present = tmp_path / "ca.crt"
    present.write_text("not checked before all three exist\n")
    partial = invoke("localhost:7400", "--tls-ca", str(present))
    assert partial.exit_code == 2
    assert "--tls-ca, --tls-cert and --tls-key go together" in partial.stderr
    missing = tmp_path / "absent.key"
    files = ["--tls-ca", str(present), "--tls-cert", str(present), "--tls-key", str(missing)]
    absent = invoke("localhost:7400", *files)
    assert absent.exit_code == 2
    assert f"no such TLS file: {missing}" in absent.stderr


def test_real_process_exit_status() -> None:
    """The console command as the hook pod runs it: a separate process, its exit status."""

    async def scenario(server: GrpcServer, address: str) -> tuple[int, int]:
        async def status() -> int:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshenc", "health-check", address, SERVICE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                return await asyncio.wait_for(process.wait(), 15)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

        serving = await status()
        await server.set_serving(SERVICE, False)
        return serving, await status()

    serving, not_serving = run(with_server(scenario), timeout=40)
    assert (serving, not_serving) == (EXIT_SERVING, EXIT_NOT_SERVING)
