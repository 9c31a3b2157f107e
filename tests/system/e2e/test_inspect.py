"""``meshenc status``, ``topology``, ``segments`` and ``events`` against real services.

The services (etcd, the Mesh Manager, two encoders) are real processes (see ``conftest.py``);
the commands run in this process through click's test runner, talking gRPC over 127.0.0.1 with
the operator's certificate (mutual TLS).
What the commands print is checked against what the services answer when asked directly.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result
from google.protobuf.json_format import MessageToDict

from meshenc.cli.main import cli
from meshenc.local.ports import free_ports
from meshenc.v1 import manager_pb2, manager_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from meshenc.wire import convert
from services.common.grpc_server import open_channel
from services.common.tls import MANAGER

from .support import ENCODERS, GOP, Services

pytestmark = pytest.mark.slow


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _states(services: Services) -> list[dict[str, Any]]:
    result = _run(
        "status", "--encoders", ",".join(services.encoders.values()), "--json", env=services.env
    )
    assert result.exit_code == 0, result.output
    answers: list[dict[str, Any]] = json.loads(result.output)
    return answers


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.3)


def test_status_shows_every_encoder_as_it_answers(services: Services) -> None:
    def settled() -> list[dict[str, Any]] | None:
        answers = _states(services)
        states = [a["state"] for a in answers]
        leaders = {s.get("leader_id", "") for s in states}
        running = all(int(s.get("timecode", 0)) > 0 for s in states)
        return answers if running and len(leaders) == 1 and "" not in leaders else None

    answers = _wait_for(settled, 30.0, "the encoders did not run and agree on a leader")
    by_id = {a["state"]["encoder_id"]: a for a in answers}
    assert set(by_id) == set(ENCODERS)
    for name, address in services.encoders.items():
        state = by_id[name]["state"]
        assert by_id[name]["address"] == address
        assert int(state["segment_number"]) == int(state["timecode"]) // GOP
        assert state["gop_length"] == GOP
        assert state["segment_id"] == "cli"
        assert state["leader_id"] in ENCODERS
        assert (state["width"], state["height"], state["bitrate_kbps"]) == (160, 96, 1500)

    table = _run(
        "status", env={**services.env, "MESHENC_ENCODERS": ",".join(services.encoders.values())}
    )
    assert table.exit_code == 0, table.output
    for name, address in services.encoders.items():
        assert name in table.output and address in table.output
    assert "160x96" in table.output and "1500k" in table.output  # the output column


def test_status_reports_encoders_that_do_not_answer(services: Services) -> None:
    (nobody,) = free_ports(1)
    silent = f"127.0.0.1:{nobody}"
    some = _run(
        "status",
        "--encoders",
        f"{services.encoders['a']},{silent}",
        "--timeout",
        "1",
        env=services.env,
    )
    assert some.exit_code == 1
    assert "no answer" in some.output and silent in some.output
    none = _run("status", "--encoders", silent, "--timeout", "1", "--json", env=services.env)
    assert none.exit_code == 3
    assert json.loads(none.output)[0]["address"] == silent


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--encoders", "127.0.0.1", "--insecure"),
        ("status", "--encoders", "127.0.0.1:99999", "--insecure"),
        ("status", "--insecure"),
        ("topology", "--insecure"),
        ("topology", "--manager", "127.0.0.1:7600", "--encoder", "bad id!", "--insecure"),
        ("segments", "--manager", "127.0.0.1:7600", "--segment", "x" * 200, "--insecure"),
        ("events", "--insecure"),
        ("status", "--encoders", "127.0.0.1:7400"),  # neither certificates nor --insecure
        ("status", "--encoders", "127.0.0.1:7400", "--insecure", "--tls-ca", "ca.crt"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(
        cli, list(args), env={"MESHENC_ENCODERS": "", "MESHENC_MANAGER": ""}
    )
    assert result.exit_code == 2, result.output


def _manager_answer(services: Services, method: str, request: Any) -> dict[str, Any]:
    async def ask() -> Any:
        async with open_channel(services.manager, tls=services.tls, server_name=MANAGER) as channel:
            return await getattr(manager_pb2_grpc.MeshManagerStub(channel), method)(
                request, timeout=5.0
            )

    return MessageToDict(asyncio.run(ask()), preserving_proto_field_name=True)


@pytest.mark.parametrize(
    ("command", "method", "request_"),
    [
        ("topology", "GetTopology", manager_pb2.GetTopologyRequest()),
        ("segments", "GetSegments", manager_pb2.GetSegmentsRequest()),
    ],
)
def test_topology_and_segments_print_what_the_manager_answers(
    services: Services, command: str, method: str, request_: Any
) -> None:
    for _attempt in range(3):  # the manager may replan between the two questions
        before = _manager_answer(services, method, request_)
        printed = _run(command, "--manager", services.manager, "--json", env=services.env)
        after = _manager_answer(services, method, request_)
        if before == after:
            break
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == after
    table = _run(command, env={**services.env, "MESHENC_MANAGER": services.manager})
    assert table.exit_code == 0, table.output
    assert "epoch" in table.output
    names = [a["encoder_id"] for a in after.get("adjacency", [])] + [
        s["segment_id"] for s in after.get("segments", [])
    ]
    for name in names:
        assert name in table.output


def test_topology_without_a_manager_answering_exits_3() -> None:
    (nobody,) = free_ports(1)
    result = _run("topology", "--manager", f"127.0.0.1:{nobody}", "--timeout", "1", "--insecure")
    assert result.exit_code == 3
    assert "UNAVAILABLE" in result.output or "DEADLINE_EXCEEDED" in result.output


def test_events_lists_each_correction_once_and_the_topology(services: Services) -> None:
    addresses = ",".join(services.encoders.values())

    def listed() -> tuple[set[Correction], list[dict[str, Any]], set[Correction]] | None:
        before = _recent_corrections(services)
        result = _run("events", "--encoders", addresses, "--json", env=services.env)
        after = _recent_corrections(services)
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines()]
        printed = [e for e in lines if e["kind"] == "correction"]
        return (before, printed, after) if printed else None

    # The injected offsets are 50 ms apart: locking in takes corrections, which GetState lists.
    before, printed, after = _wait_for(listed, 30.0, "no correction was reported")
    keys = [(e["encoder"], round(e["at"] * 1e9), e["correction"], e["shift_ns"]) for e in printed]
    assert len(keys) == len(set(keys)), "a correction was listed twice"
    # Each printed correction was among the encoders' recent ones just before or just after,
    # and each that was recent both before and after was printed.
    assert all(_near(key, before | after) for key in keys), (keys, before, after)
    assert all(_near(key, set(keys)) for key in before & after)

    epoch_before = _epoch(services)
    followed = _run(
        "events", "--follow", "--for", "3", "--json",
        "--encoders", addresses, "--manager", services.manager,
        env=services.env,
    )  # fmt: skip
    epoch_after = _epoch(services)
    assert followed.exit_code == 0, followed.output
    lines = [json.loads(line) for line in followed.output.splitlines()]
    topology = [e for e in lines if e["kind"] == "topology"]
    if epoch_before:  # the manager sends its current topology at once, once it has one
        assert topology and epoch_before <= topology[-1]["epoch"] <= epoch_after
    followed_keys = [
        (e["encoder"], e["at"], e["correction"]) for e in lines if e["kind"] == "correction"
    ]
    assert len(followed_keys) == len(set(followed_keys))


Correction = tuple[str, int, str, int]


def _near(key: Correction, known: set[Correction]) -> bool:
    """``key`` is in ``known`` (its time converted through float seconds: within 1 µs)."""
    encoder, at_ns, kind, shift = key
    return any(
        (e, k, s) == (encoder, kind, shift) and abs(a - at_ns) < 1_000 for e, a, k, s in known
    )


def _epoch(services: Services) -> int:
    answer = _manager_answer(services, "GetTopology", manager_pb2.GetTopologyRequest())
    return int(answer.get("epoch", 0))


def _recent_corrections(services: Services) -> set[Correction]:
    """Every correction the encoders list in GetState now: (encoder, at ns, kind, shift ns)."""

    async def ask(address: str) -> mesh_pb2.EncoderState:
        async with open_channel(address, tls=services.tls) as channel:
            state: mesh_pb2.EncoderState = await mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
                mesh_pb2.GetStateRequest(), timeout=5.0
            )
            return state

    found: set[Correction] = set()
    for address in services.encoders.values():
        state = asyncio.run(ask(address))
        for c in state.recent_corrections:
            kind = convert.kind_from_proto(c.kind).value
            found.add((state.encoder_id, c.at_ns, kind, c.shift_ns))
    return found
