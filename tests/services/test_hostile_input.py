"""Hostile input, fuzzed: every RPC of every service against Hypothesis-generated requests.

The real servers run in-process on 127.0.0.1 with mutual TLS, on one event loop with the
client: the encoder's ``MeshServer`` and ``MeshLinks`` (the encoder runtime behind them is
``FakeHandler``, the recording stand-in of ``tests/services/encoder/test_mesh.py``: the real
one needs a live video input), the manager on a real etcd, and a registry node. The client
presents the operator's certificate and sends raw bytes on the generic channel (no size limit
of its own, so that oversized requests reach the server).

Each RPC gets valid requests, valid ones with random field values (out-of-range numbers, huge
strings, unknown enum values), requests with every field random, byte-level mutations of valid
serialised ones (bit flips, insertions, deletions, truncations) and random bytes; streams get
sequences of them, usually after a Hello or first report (valid, or itself mutated). Every
answer must be OK or a status code that docs/hostile-input.md lists for that RPC (the table is
read from there), no log line may be an ERROR or carry a traceback, and afterwards the service
must answer a valid request with its state intact.

``MESHENC_FUZZ_EXAMPLES`` sets the inputs per RPC (1,000 by default, what ``make test`` runs;
``make fuzz`` runs 10,000). ``MESHENC_FUZZ_REPORT`` names a JSON file to write the counts and
status-code histograms to.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshenc.core.kademlia import key_for
from meshenc.core.planner.manager import ManagerConfig
from meshenc.local.etcd import EtcdProcess
from meshenc.v1 import common_pb2, manager_pb2, mesh_pb2, registry_pb2
from meshenc.wire import convert
from meshenc.wire.signature import RecordSigner
from meshenc.wire.validation import MAX_BITRATE_KBPS, MIN_BITRATE_KBPS
from services.common.certs import CertificateSet, make_certificates
from services.common.peer_limits import PeerLimits
from services.common.registry_client import next_version
from services.common.tls import MANAGER, OPERATOR, REGISTRY, channel_credentials, record_signer
from services.encoder.mesh import MeshLinks, MeshServer
from services.registry.node import RegistryNode
from services.registry.settings import RegistrySettings
from tests.services.encoder.test_mesh import FakeHandler, esp, hello, proposal
from tests.services.manager_support import Manager, start_manager, stop_manager

T = TypeVar("T")

EXAMPLES = int(os.environ.get("MESHENC_FUZZ_EXAMPLES", "1000"))
"""Inputs sent per RPC."""
REPORT = os.environ.get("MESHENC_FUZZ_REPORT")
DOC = Path(__file__).resolve().parents[2] / "docs" / "hostile-input.md"
ENCODER = "m1"
"""The fuzzed encoder's id (its certificate's identity)."""
BATCH = 20
"""Inputs sent at once (one Hypothesis example): the server handles them concurrently, as it
would a crowd of callers, and the run costs less than one call at a time."""
WATCH_WAIT = 0.05
"""Seconds a watch may take to answer before it counts as open (and is cancelled)."""
LIMITS = PeerLimits(max_messages_per_second=1e6)
"""The fuzzer sends far faster than an encoder: the message rate is not what is tested here
(``tests/services/common/test_peer_limits.py`` is)."""


def documented_codes() -> dict[str, frozenset[str]]:
    """The status codes docs/hostile-input.md allows per RPC (OK always)."""
    rows = re.findall(r"^\| `meshenc\.v1\.(\w+/\w+)` \| ([A-Z_, ]+) \|$", DOC.read_text(), re.M)
    return {rpc: frozenset({"OK", *codes.replace(" ", "").split(",")}) for rpc, codes in rows}


# -- the servers, on a loop of their own ---------------------------------------------------------


HANG_GUARD: Final = 120.0
"""Seconds a batch of sends may take before the test calls it a hang: each call has a 5 s
deadline of its own, but on a machine at load 40 to 50 a batch of them once took over 30 s."""


class Loop:
    """The event loop the servers and the client's calls share: the test runs each send on it
    (``run_until_complete``); between sends the servers wait, as does their background work."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = HANG_GUARD) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self.loop.close()


@dataclass
class World:
    """The three services under fuzz and a raw channel to each."""

    loop: Loop
    certs: CertificateSet
    handler: FakeHandler
    mesh: MeshServer
    links: MeshLinks
    manager: Manager
    registry: RegistryNode
    channels: dict[str, Any] = field(default_factory=dict)
    topology: bytes = b""
    tally: dict[str, collections.Counter[str]] = field(default_factory=dict)

    def channel(self, rpc: str) -> Any:
        return self.channels[rpc.partition("/")[0]]


def raw_channel(certs: CertificateSet, port: int, server_name: str) -> Any:
    """A TLS channel as the operator, without meshenc's message size limits."""
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(certs.files(OPERATOR)),
        options=[
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )


async def unary(world: World, rpc: str, request: bytes, timeout: float = 5.0) -> tuple[str, bytes]:
    call = world.channel(rpc).unary_unary(f"/meshenc.v1.{rpc}")
    try:
        return "OK", await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name), b""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("fuzz")
    certs = make_certificates(folder / "certs", [ENCODER, MANAGER, REGISTRY, OPERATOR])
    etcd = EtcdProcess(log_path=folder / "etcd.log").start()
    loop = Loop()

    async def start() -> World:
        handler = FakeHandler(ENCODER, [OPERATOR])
        links = MeshLinks(handler, tls=certs.files(ENCODER), handshake_timeout=2.0)
        handler.links = links
        mesh = MeshServer(handler, links, tls=certs.files(ENCODER), limits=LIMITS)
        mesh_port = await mesh.start("127.0.0.1:0")
        manager = await start_manager(
            etcd,
            tls=certs.files(MANAGER),
            client_tls=certs.files(OPERATOR),
            limits=LIMITS,
            # The three encoders are registered but send no reports: they stay for the run.
            config=ManagerConfig(report_timeout=3600.0),
        )
        for index, name in enumerate(["e1", "e2", "e3"]):
            await manager.register(name, 7400 + index, ttl=3600)
        registry = RegistryNode(
            RegistrySettings(listen="127.0.0.1:0", tls=certs.files(REGISTRY), peer_limits=LIMITS)
        )
        registry_port = await registry.start()
        registry.store_record(None, owned_record())
        SIGNERS[OPERATOR] = record_signer(certs.files(OPERATOR))
        world = World(loop, certs, handler, mesh, links, manager, registry)
        manager_port = int(manager.address.rsplit(":", 1)[1])
        world.channels = {
            "EncoderMesh": raw_channel(certs, mesh_port, ENCODER),
            "MeshManager": raw_channel(certs, manager_port, MANAGER),
            "Registry": raw_channel(certs, registry_port, REGISTRY),
        }
        deadline = time.monotonic() + 10.0
        while True:  # the plan with all three encoders
            code, answer = await unary(world, "MeshManager/GetTopology", b"")
            topology = manager_pb2.Topology.FromString(answer)
            if code == "OK" and len(topology.adjacency) == 3:
                world.topology = answer
                return world
            assert time.monotonic() < deadline, "the manager never planned the three encoders"
            await asyncio.sleep(0.05)

    async def stop(world: World) -> None:
        for channel in world.channels.values():
            await channel.close()
        await world.links.close()
        await world.mesh.stop(0.2)
        await stop_manager(world.manager)
        await world.registry.stop(0.2)

    try:
        started = loop.run(start())
        try:
            yield started
        finally:
            loop.run(stop(started))
            if REPORT:
                histograms = {rpc: dict(counts) for rpc, counts in started.tally.items()}
                Path(REPORT).write_text(json.dumps(histograms, indent=2, sort_keys=True))
    finally:
        loop.close()
        etcd.close()


OWNED_VERSION = next_version(0, time.time_ns())


def owned_record() -> registry_pb2.EncoderRecord:
    """A record the registry holds before the fuzz; it must hold it unchanged after."""
    return registry_pb2.EncoderRecord(
        encoder_id="e1",
        address="10.1.2.3:7400",
        segment_id="seg-1",
        capacity=4,
        health=registry_pb2.ENCODER_HEALTH_HEALTHY,
        version=OWNED_VERSION,
        ttl_ms=3_600_000,
    )


# -- requests: from the descriptors, valid, mutated ----------------------------------------------
# (Strategies are built once per field and depth: building them per draw cost more than the
# calls they feed.)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
_HUGE = (129, 257, 513, 4_097, 70_000, 1_100_000)
"""Lengths just past the validation limits, and past the 1 MiB request limit."""


@functools.cache
def strings(depth: int) -> st.SearchStrategy[str]:
    """Text, ids, names the services know, and huge strings (past 1 MiB at the top level
    only: a nested one repeated 70 times would cost the fuzzer more than the server)."""
    lengths = _HUGE if depth == 0 else _HUGE[:4]
    return st.one_of(
        st.text(max_size=16),
        st.text(alphabet=_ID_CHARS, min_size=1, max_size=12),
        st.sampled_from(["", ENCODER, OPERATOR, "e1", "127.0.0.1:7400", "ipv4:x"]),
        st.sampled_from(lengths).map(lambda n: "x" * n),
    )


binaries = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([0, 19, 20, 21, 70_000]).map(lambda n: b"\x01" * n),
)


@functools.cache
def integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted(
        {v for v in (low, low + 1, -1, 0, 1, 2, high // 2, high - 1, high) if low <= v <= high}
    )
    return st.one_of(
        st.sampled_from(edges),
        st.integers(0, 100_000).filter(lambda v: v <= high),
        st.integers(low, high),
    )


def _is_map(field_descriptor: FieldDescriptor) -> bool:
    entry = field_descriptor.message_type
    return entry is not None and entry.GetOptions().map_entry


@functools.cache
def _single(field_descriptor: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Random values of one (non-repeated) field of the given type."""
    kind = field_descriptor.type
    if kind in _INT_RANGES:
        return integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(depth)
    if kind == FieldDescriptor.TYPE_BYTES:
        return binaries
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 9)  # unknown values too: proto3 enums are open
    assert field_descriptor.message_type is not None
    return random_message(field_descriptor.message_type, depth + 1)


@functools.cache
def field_values(field_descriptor: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Random values for ``field_descriptor``: one value, a list, or a dict (maps)."""
    if _is_map(field_descriptor):
        entry = field_descriptor.message_type
        assert entry is not None
        keys = _single(entry.fields_by_name["key"], depth)
        values = _single(entry.fields_by_name["value"], depth)
        return st.one_of(
            st.dictionaries(keys, values, max_size=3),
            st.dictionaries(keys, values, min_size=9, max_size=10),
        )
    single = _single(field_descriptor, depth)
    if field_descriptor.is_repeated:
        return st.one_of(
            st.lists(single, max_size=3),
            st.tuples(single, st.integers(63, 70)).map(lambda pair: [pair[0]] * pair[1]),
        )
    return single


def assign(message: Message, field_descriptor: FieldDescriptor, value: Any) -> None:
    """Set ``field_descriptor`` of ``message`` to ``value`` (replacing what was there)."""
    name = field_descriptor.name
    if _is_map(field_descriptor):
        target = getattr(message, name)
        target.clear()
        target.update(value)
    elif field_descriptor.is_repeated:
        del getattr(message, name)[:]
        getattr(message, name).extend(value)
    elif field_descriptor.message_type is not None:
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


@functools.cache
def random_message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with any subset of fields set to random values."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    optional = {f.name: field_values(f, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Message]) -> Message:
    """A valid message with one to three fields (maybe nested) set to random values."""
    message = draw(valid)
    copy = type(message)()
    copy.CopyFrom(message)
    for _ in range(draw(st.integers(1, 3))):
        target: Message = copy
        while target.DESCRIPTOR.fields:
            chosen = cast(FieldDescriptor, draw(st.sampled_from(list(target.DESCRIPTOR.fields))))
            nested = (
                chosen.message_type is not None and not chosen.is_repeated and draw(st.booleans())
            )
            if nested:
                target = getattr(target, chosen.name)
                continue
            assign(target, chosen, draw(field_values(chosen, 2)))
            break
    return copy


@st.composite
def byte_mutated(draw: st.DrawFn, valid: st.SearchStrategy[Message]) -> bytes:
    """A valid message's bytes, flipped, overwritten, cut, grown or truncated."""
    data = bytearray(draw(valid).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        if operation in ("flip", "set", "delete", "truncate") and not size:
            operation = "append"
        if operation == "flip":
            data[draw(st.integers(0, size - 1))] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
        elif operation == "insert":
            at = draw(st.integers(0, size))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            at = draw(st.integers(0, size - 1))
            del data[at : at + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del data[draw(st.integers(0, size - 1)) :]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def request_bytes(rpc: str) -> st.SearchStrategy[bytes]:
    """Serialised requests: valid, field-mutated, all-random, byte-mutated, random bytes."""
    valid = VALID[rpc]
    descriptor: Any = REQUEST_TYPES[rpc].DESCRIPTOR
    return st.one_of(
        valid.map(lambda m: m.SerializeToString()),
        mutated(valid).map(lambda m: m.SerializeToString()),
        random_message(descriptor).map(lambda m: m.SerializeToString()),
        byte_mutated(valid),
        st.binary(max_size=64),
    )


# -- valid requests, per RPC ---------------------------------------------------------------------

SIGNERS: dict[str, RecordSigner] = {}
"""Record signers by identity, filled by the ``world`` fixture (the certificates are made there,
after the strategies below are built; they draw only once it ran)."""

NOW_NS = time.time_ns()
sequences = st.integers(1, 1_000_000)


@functools.cache
def own_store_request(version: int) -> registry_pb2.StoreRequest:
    """The operator storing its own record, signed (as a client under mutual TLS does). Once
    per version: an ECDSA signature differs each time it is made, and Hypothesis replays a
    draw expecting the same bytes. (Callers copy before they change it.)"""
    record = registry_pb2.EncoderRecord(
        encoder_id=OPERATOR,
        address="127.0.0.1:7499",
        segment_id="seg-1",
        capacity=1,
        health=registry_pb2.ENCODER_HEALTH_DEGRADED,
        version=version,
        ttl_ms=60_000,
    )
    SIGNERS[OPERATOR].sign(record)
    return registry_pb2.StoreRequest(record=record)


def _mesh_messages() -> st.SearchStrategy[Message]:
    def esp_message(sequence: int) -> Message:
        return mesh_pb2.MeshMessage(esp=convert.esp_to_proto(esp(OPERATOR, sequence)))

    def proposal_message(proposal_id: int) -> Message:
        return mesh_pb2.MeshMessage(
            proposal=convert.proposal_to_proto(proposal(OPERATOR, proposal_id))
        )

    def vote_message(proposal_id: int) -> Message:
        return mesh_pb2.MeshMessage(
            vote=mesh_pb2.ResyncVote(
                proposer_id=ENCODER, proposal_id=proposal_id, voter_id=OPERATOR, approve=True
            )
        )

    return st.one_of(
        sequences.map(esp_message),
        sequences.map(proposal_message),
        sequences.map(vote_message),
    )


HELLO_MESSAGE = mesh_pb2.MeshMessage(hello=hello(OPERATOR))
HELLO = HELLO_MESSAGE.SerializeToString()
VALID: dict[str, st.SearchStrategy[Message]] = {
    "EncoderMesh/Exchange": _mesh_messages(),
    # The encoder's one channel by name or by default, or a channel it does not encode.
    "EncoderMesh/GetState": st.sampled_from(["", "0", "other"]).map(
        lambda channel: mesh_pb2.GetStateRequest(channel=channel)
    ),
    "EncoderMesh/SetParameters": st.builds(
        lambda kbps, channel: mesh_pb2.SetParametersRequest(bitrate_kbps=kbps, channel=channel),
        st.integers(MIN_BITRATE_KBPS, MAX_BITRATE_KBPS),
        st.sampled_from(["", "0", "other"]),
    ),
    "MeshManager/ReportHealth": st.floats(0.0, 1.0).map(
        lambda confidence: manager_pb2.HealthReport(
            encoder_id=OPERATOR, sent_unix_ns=NOW_NS, confidence=confidence, cpu_load=0.5
        )
    ),
    "MeshManager/Escalate": sequences.map(
        lambda proposal_id: manager_pb2.Escalation(
            encoder_id=OPERATOR,
            proposal=mesh_pb2.ResyncProposal(
                proposer_id=OPERATOR,
                proposal_id=proposal_id,
                kind=common_pb2.CORRECTION_KIND_SLEW,
                shift_ns=3_000_000,
                topology_epoch=1,
            ),
            neighbour_count=2,
            sent_unix_ns=NOW_NS,
        )
    ),
    "MeshManager/GetTopology": st.sampled_from(["", "e1", "e2", "nobody"]).map(
        lambda encoder: manager_pb2.GetTopologyRequest(encoder_id=encoder)
    ),
    "MeshManager/GetSegments": st.sampled_from(["", "main", "nowhere"]).map(
        lambda segment: manager_pb2.GetSegmentsRequest(segment_id=segment)
    ),
    "MeshManager/WatchTopology": st.tuples(st.integers(0, 3), st.sampled_from(["", "e1"])).map(
        lambda pair: manager_pb2.WatchTopologyRequest(after_epoch=pair[0], encoder_id=pair[1])
    ),
    "Registry/Ping": st.just(registry_pb2.PingRequest()),
    "Registry/FindNode": st.binary(min_size=20, max_size=20).map(
        lambda target: registry_pb2.FindNodeRequest(target=target)
    ),
    "Registry/FindValue": st.sampled_from(["e1", "e2", OPERATOR]).map(
        lambda encoder: registry_pb2.FindValueRequest(key=key_for(encoder))
    ),
    "Registry/Store": sequences.map(lambda bump: own_store_request(OWNED_VERSION + bump)),
}
"""Valid requests (for streams: valid messages after the first) per RPC."""
REQUEST_TYPES: dict[str, type[Message]] = {
    "EncoderMesh/Exchange": mesh_pb2.MeshMessage,
    "EncoderMesh/GetState": mesh_pb2.GetStateRequest,
    "EncoderMesh/SetParameters": mesh_pb2.SetParametersRequest,
    "MeshManager/ReportHealth": manager_pb2.HealthReport,
    "MeshManager/Escalate": manager_pb2.Escalation,
    "MeshManager/GetTopology": manager_pb2.GetTopologyRequest,
    "MeshManager/GetSegments": manager_pb2.GetSegmentsRequest,
    "MeshManager/WatchTopology": manager_pb2.WatchTopologyRequest,
    "Registry/Ping": registry_pb2.PingRequest,
    "Registry/FindNode": registry_pb2.FindNodeRequest,
    "Registry/FindValue": registry_pb2.FindValueRequest,
    "Registry/Store": registry_pb2.StoreRequest,
}
FIRST_REPORT_MESSAGE = manager_pb2.HealthReport(
    encoder_id=OPERATOR, sent_unix_ns=NOW_NS, confidence=0.9
)


def stream_of(rpc: str, first: Message) -> st.SearchStrategy[list[bytes]]:
    """Sequences of fuzzed messages, after a first one (the stream's Hello or first report)
    three times out of four: valid, or with random fields (another sender, another protocol
    version, ...), or its bytes mutated."""
    valid = first.SerializeToString()
    firsts = st.one_of(
        st.just(valid),
        st.just(valid),
        mutated(st.just(first)).map(lambda m: m.SerializeToString()),
        byte_mutated(st.just(first)),
    )
    fuzzed = st.lists(request_bytes(rpc), min_size=0, max_size=3)
    return st.tuples(st.integers(0, 3), firsts, fuzzed).map(
        lambda drawn: ([drawn[1]] if drawn[0] else []) + drawn[2]
    )


# -- sending -------------------------------------------------------------------------------------


async def send_stream_in(world: World, rpc: str, requests: Sequence[bytes]) -> str:
    call = world.channel(rpc).stream_unary(f"/meshenc.v1.{rpc}")
    try:
        await call(iter(requests), timeout=5.0)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)


async def send_exchange(world: World, requests: Sequence[bytes]) -> str:
    call = world.channel("EncoderMesh").stream_stream("/meshenc.v1.EncoderMesh/Exchange")(
        iter(requests), timeout=5.0
    )
    try:
        async for _ in call:
            pass
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)


async def send_watch(world: World, request: bytes) -> str:
    """One WatchTopology call: its first answer or error, or open (OK) after ``WATCH_WAIT``."""
    method = world.channel("MeshManager").unary_stream("/meshenc.v1.MeshManager/WatchTopology")
    call = method(request, timeout=5.0)
    try:
        await asyncio.wait_for(call.read(), WATCH_WAIT)
        return "OK"
    except TimeoutError:
        return "OK"  # open, waiting for the next plan: nothing wrong
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    finally:
        call.cancel()


def fuzz(
    world: World,
    rpc: str,
    inputs: st.SearchStrategy[T],
    send: Callable[[T], Coroutine[Any, Any, str]],
) -> collections.Counter[str]:
    """Send ``EXAMPLES`` inputs of ``inputs`` to ``rpc``, ``BATCH`` at once (an example is a
    batch); hold every answer to the table."""
    allowed = documented_codes()[rpc]
    counts: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=-(-EXAMPLES // BATCH),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(inputs, min_size=BATCH, max_size=BATCH))
    def batch(values: list[T]) -> None:
        async def every() -> list[str]:
            return list(await asyncio.gather(*(send(value) for value in values)))

        codes = world.loop.run(every())
        counts.update(codes)
        assert set(codes) <= allowed, f"{rpc} answered {codes}, documented: {sorted(allowed)}"

    batch()
    world.tally[rpc] = counts
    print(f"{rpc}: {sum(counts.values())} inputs, {dict(sorted(counts.items()))}")
    assert sum(counts.values()) >= EXAMPLES, counts
    return counts


def assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info is not None or "Traceback" in r.getMessage()
    ]
    assert not bad, [r.getMessage() for r in bad]


# -- the tests -----------------------------------------------------------------------------------


def test_the_table_names_every_rpc_of_every_service() -> None:
    services = [mesh_pb2.DESCRIPTOR, manager_pb2.DESCRIPTOR, registry_pb2.DESCRIPTOR]
    rpcs = {
        f"{service.name}/{method.name}"
        for module in services
        for service in module.services_by_name.values()
        for method in service.methods
    }
    assert set(documented_codes()) == rpcs == set(VALID) == set(REQUEST_TYPES)


UNARY = [
    "EncoderMesh/GetState",
    "EncoderMesh/SetParameters",
    "MeshManager/Escalate",
    "MeshManager/GetTopology",
    "MeshManager/GetSegments",
    "Registry/Ping",
    "Registry/FindNode",
    "Registry/FindValue",
    "Registry/Store",
]


@pytest.mark.parametrize("rpc", UNARY)
def test_unary_rpcs_answer_only_documented_codes(
    world: World, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def send(request: bytes) -> str:
        code, _ = await unary(world, rpc, request)
        return code

    with caplog.at_level(logging.WARNING):
        fuzz(world, rpc, request_bytes(rpc), send)
        check_intact(world, rpc.partition("/")[0])
    assert_clean_log(caplog)


def test_exchange_answers_only_documented_codes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    async def send(requests: list[bytes]) -> str:
        return await send_exchange(world, requests)

    with caplog.at_level(logging.WARNING):
        fuzz(world, "EncoderMesh/Exchange", stream_of("EncoderMesh/Exchange", HELLO_MESSAGE), send)
        check_intact(world, "EncoderMesh")
    assert_clean_log(caplog)


def test_report_health_answers_only_documented_codes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    rpc = "MeshManager/ReportHealth"

    async def send(requests: list[bytes]) -> str:
        return await send_stream_in(world, rpc, requests)

    with caplog.at_level(logging.WARNING):
        fuzz(world, rpc, stream_of(rpc, FIRST_REPORT_MESSAGE), send)
        check_intact(world, "MeshManager")
    assert_clean_log(caplog)


def test_watch_topology_answers_only_documented_codes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    rpc = "MeshManager/WatchTopology"

    async def send(request: bytes) -> str:
        return await send_watch(world, request)

    with caplog.at_level(logging.WARNING):
        fuzz(world, rpc, request_bytes(rpc), send)
        check_intact(world, "MeshManager")
    assert_clean_log(caplog)


def check_intact(world: World, service: str) -> None:
    """The service answers a valid request, and what it held before the fuzz it holds still."""

    async def mesh() -> None:
        code, answer = await unary(world, "EncoderMesh/GetState", b"")
        assert code == "OK" and mesh_pb2.EncoderState.FromString(answer).encoder_id == ENCODER
        before = len(world.handler.esps)
        marker = mesh_pb2.MeshMessage(esp=convert.esp_to_proto(esp(OPERATOR, 7)))
        assert await send_exchange(world, [HELLO, marker.SerializeToString()]) == "OK"
        assert len(world.handler.esps) == before + 1
        assert world.handler.esps[-1] == convert.esp_from_proto(marker.esp)

    async def manager() -> None:
        code, answer = await unary(world, "MeshManager/GetTopology", b"")
        assert code == "OK"
        after = manager_pb2.Topology.FromString(answer)
        assert after == manager_pb2.Topology.FromString(world.topology)

    async def registry() -> None:
        code, answer = await unary(world, "Registry/Ping", b"")
        assert code == "OK"
        request = registry_pb2.FindValueRequest(key=key_for("e1")).SerializeToString()
        code, answer = await unary(world, "Registry/FindValue", request)
        found = registry_pb2.FindValueResponse.FromString(answer).record
        expected = owned_record()
        assert code == "OK" and (found.address, found.version) == (
            expected.address,
            expected.version,
        )

    checks = {"EncoderMesh": mesh, "MeshManager": manager, "Registry": registry}
    world.loop.run(checks[service]())
