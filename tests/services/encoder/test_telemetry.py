"""``services.encoder.telemetry`` in one process: the resync span tree across encoders, the
other encoder spans, and the encoder's metrics as scraped.

Spans are recorded by the OpenTelemetry SDK's own in-memory exporter. Messages between
encoders go through the real wire conversion and validation, with the trace context each
encoder's telemetry names for them, as the mesh links send them. Engines and mesh links are
the real ones; the only stand-in is the mesh links' handler in the scrape tests, which nothing
calls. The metrics endpoint is scraped over real HTTP.
"""

from __future__ import annotations

import math
import urllib.request

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from meshenc.core.election import ElectionSnapshot, Role
from meshenc.core.engine import (
    CorrectionApplied,
    EngineConfig,
    Escalate,
    LockInTurnedDown,
    SendProposal,
    SyncEngine,
)
from meshenc.core.messages import CorrectionKind, ResyncProposal
from meshenc.core.timecode import FrameRate
from meshenc.core.votes import Outcome, Verdict, judge_proposal
from meshenc.v1 import mesh_pb2
from meshenc.wire import convert
from services.common.telemetry import REGISTRY, start_metrics_server
from services.encoder.media.publish import OriginStats
from services.encoder.mesh import MeshLinks
from services.encoder.runtime import RunStats
from services.encoder.telemetry import EncoderTelemetry
from tests.services.traces import by_name, over_the_wire, parent_id, span_id, trace_id

FRAME_RATE = FrameRate.parse("30")


def encoder(node_id: str, provider: TracerProvider, peers: tuple[str, ...]) -> EncoderTelemetry:
    """Telemetry for an encoder whose engine (a real one) has ``peers`` as neighbours."""
    engine = SyncEngine(node_id, EngineConfig(frame_rate=FRAME_RATE), peers)
    return EncoderTelemetry(
        node_id, lambda: engine.snapshot(0.0), tracer=provider.get_tracer("test")
    )


# -- one resync, one trace ----------------------------------------------------------------------


def test_a_resync_is_one_trace_from_proposal_through_votes_to_the_correction(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    a = encoder("a", provider, ("b", "c"))
    b = encoder("b", provider, ("a",))
    c = encoder("c", provider, ("a",))
    proposal = ResyncProposal("a", 1, CorrectionKind.SLEW, 0.004, 3)
    a.on_action(SendProposal(proposal, ("b", "c")))
    sent = convert.proposal_to_proto(proposal, a.proposal_trace(proposal.proposal_id))
    wire = mesh_pb2.MeshMessage(proposal=sent)
    for voter, telemetry_of_voter in (("b", b), ("c", c)):
        received = convert.proposal_from_proto(over_the_wire(wire, voter).proposal)
        vote = judge_proposal(received, voter, -0.004, 0.008)
        telemetry_of_voter.vote_cast(received, vote)
        answer = convert.vote_to_proto(vote, telemetry_of_voter.vote_trace(vote))
        back = over_the_wire(mesh_pb2.MeshMessage(vote=answer), "a")
        a.vote_received(convert.vote_from_proto(back.vote))
    a.on_action(CorrectionApplied(0.0, CorrectionKind.SLEW, 0.004, 0.0, math.nan, 1))

    finished = exporter.get_finished_spans()
    (root,) = by_name(finished, "resync")
    votes = by_name(finished, "resync.vote")
    counts = by_name(finished, "resync.vote.count")
    (correct,) = by_name(finished, "resync.correct")
    assert {trace_id(span) for span in finished} == {trace_id(root)}
    assert root.parent is None
    assert root.attributes is not None and root.attributes["meshenc.resync.verdict"] == "accepted"
    assert sorted(str(v.attributes["meshenc.node"]) for v in votes if v.attributes) == ["b", "c"]
    assert all(parent_id(vote) == span_id(root) for vote in votes)
    assert sorted(parent_id(count) or 0 for count in counts) == sorted(map(span_id, votes))
    assert parent_id(correct) == span_id(root)


@pytest.mark.parametrize("locked", [True, False], ids=["escalated", "lock-in move"])
def test_rejected_and_expired_resyncs_end_with_their_verdict(
    spans: tuple[TracerProvider, InMemorySpanExporter], locked: bool
) -> None:
    """A locked encoder's proposal ends when it is escalated; a lock-in move's, when the engine
    says it was turned down (it is not escalated)."""
    provider, exporter = spans
    a = encoder("a", provider, ("b",))
    for proposal_id, verdict in ((1, Verdict.REJECTED), (2, Verdict.EXPIRED)):
        proposal = ResyncProposal("a", proposal_id, CorrectionKind.DROP, 0.033, 1)
        a.on_action(SendProposal(proposal, ("b",)))
        outcome = Outcome(proposal, verdict, frozenset(), frozenset({"b"}), 0.0)
        a.on_action(Escalate(outcome, 0.02) if locked else LockInTurnedDown(outcome, 0.7))
    roots = {
        span.attributes["meshenc.resync.proposal_id"]: span
        for span in by_name(exporter.get_finished_spans(), "resync")
        if span.attributes
    }
    assert roots[1].attributes is not None and roots[2].attributes is not None
    assert roots[1].attributes["meshenc.resync.verdict"] == "rejected"
    assert roots[1].status.status_code is StatusCode.UNSET
    assert roots[2].attributes["meshenc.resync.verdict"] == "expired"
    assert roots[2].status.status_code is StatusCode.ERROR
    assert not by_name(exporter.get_finished_spans(), "resync.correct")


def test_open_resyncs_are_ended_on_close_and_bounded(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    engine = SyncEngine("a", EngineConfig(frame_rate=FRAME_RATE), ("b",))
    a = EncoderTelemetry(
        "a", lambda: engine.snapshot(0.0), tracer=provider.get_tracer("t"), max_open=2
    )
    for proposal_id in (1, 2, 3):
        proposal = ResyncProposal("a", proposal_id, CorrectionKind.SLEW, 0.001, 1)
        a.on_action(SendProposal(proposal, ("b",)))
    # The oldest was ended to stay within max_open; close ends the rest.
    assert [
        s.attributes["meshenc.resync.proposal_id"]
        for s in exporter.get_finished_spans()
        if s.attributes
    ] == [1]
    a.close()
    verdicts = [
        span.attributes["meshenc.resync.verdict"]
        for span in by_name(exporter.get_finished_spans(), "resync")
        if span.attributes
    ]
    assert verdicts == ["abandoned"] * 3


def test_a_vote_on_an_untraced_proposal_starts_its_own_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    b = encoder("b", provider, ("a",))
    proposal = ResyncProposal("a", 4, CorrectionKind.SLEW, 0.002, 1)
    vote = judge_proposal(proposal, "b", None, 0.008)
    b.vote_cast(proposal, vote)
    (span,) = exporter.get_finished_spans()
    assert span.name == "resync.vote" and span.parent is None
    assert dict(b.vote_trace(vote))["traceparent"].split("-")[2] == f"{span_id(span):016x}"


def test_messages_go_out_with_the_context_of_their_span_while_it_is_kept(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    engine = SyncEngine("a", EngineConfig(frame_rate=FRAME_RATE), ("b",))
    a = EncoderTelemetry(
        "a", lambda: engine.snapshot(0.0), tracer=provider.get_tracer("t"), max_open=2
    )
    assert a.proposal_trace(1) == ()  # nothing proposed yet
    a.on_action(SendProposal(ResyncProposal("a", 1, CorrectionKind.SLEW, 0.004, 1), ("b",)))
    headers = dict(a.proposal_trace(1))
    a.on_action(CorrectionApplied(0.0, CorrectionKind.SLEW, 0.004, 0.0, math.nan, 1))
    (root,) = by_name(exporter.get_finished_spans(), "resync")
    assert headers["traceparent"].split("-")[2] == f"{span_id(root):016x}"
    assert a.proposal_trace(1) == ()  # the resync ended: a late copy starts no new child

    votes = [
        judge_proposal(ResyncProposal("x", n, CorrectionKind.SLEW, 0.002, 1), "a", 0.0, 0.008)
        for n in (1, 2, 3)
    ]
    for vote in votes:
        a.vote_cast(ResyncProposal("x", vote.proposal_id, CorrectionKind.SLEW, 0.002, 1), vote)
    vote_spans = by_name(exporter.get_finished_spans(), "resync.vote")
    assert a.vote_trace(votes[0]) == ()  # beyond max_open: forgotten
    for vote, span in zip(votes[1:], vote_spans[1:], strict=True):
        assert dict(a.vote_trace(vote))["traceparent"].split("-")[2] == f"{span_id(span):016x}"


def test_a_new_leader_is_one_span_and_one_count(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    a = encoder("a", provider, ("b",))
    before = REGISTRY.get_sample_value("meshenc_leader_changes_total") or 0.0
    for leader, token in (("b", 1), ("b", 1), ("a", 2)):
        role = Role.LEADER if leader == "a" else Role.FOLLOWER
        a.leader_changed(ElectionSnapshot(role, leader, token, token, False, ("a", "b"), ()))
    changes = by_name(exporter.get_finished_spans(), "leader.change")
    assert [s.attributes["meshenc.leader.current"] for s in changes if s.attributes] == ["b", "a"]
    assert REGISTRY.get_sample_value("meshenc_leader_changes_total") == before + 2


# -- the metrics endpoint ------------------------------------------------------------------------


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` over HTTP, parsed: sample name → labels → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def test_the_endpoint_serves_the_encoders_state_as_observed(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans

    class Handler:  # stands in for the runtime, which nothing here calls
        node_id = "a"

    links = MeshLinks(Handler())  # type: ignore[arg-type]
    links.sent["b"] += 12
    links.writes["b"] += 5
    links.dropped_esps["b"] += 3
    a = encoder("a", provider, ("b",))
    stats = RunStats(frames=90, skipped=2, unvouched=5, unconfirmed=2, stalls=1, restored=3)
    a.observe(links, stats, (0.25, 0.004))
    server = start_metrics_server("127.0.0.1:0")
    try:
        samples = scrape(server.port)
    finally:
        server.close()
    assert samples["meshenc_mesh_messages_sent_total"] == {(("neighbour", "b"),): 12.0}
    assert samples["meshenc_mesh_writes_total"] == {(("neighbour", "b"),): 5.0}
    assert samples["meshenc_esp_dropped_total"] == {(("neighbour", "b"),): 3.0}
    assert samples["meshenc_neighbour_connected"] == {(("neighbour", "b"),): 0.0}
    assert samples["meshenc_frames_total"] == {(): 90.0}
    assert samples["meshenc_frames_skipped_total"] == {(): 2.0}
    assert samples["meshenc_cpu_load_ratio"] == {(): 0.25}
    assert samples["meshenc_bitrate_kbps"] == {(): 1500.0}
    assert samples["meshenc_stalls_total"] == {(): 1.0}
    assert samples["meshenc_segments_unvouched_total"] == {(): 5.0}
    assert samples["meshenc_segments_unconfirmed_total"] == {(): 2.0}
    assert samples["meshenc_segments_restored_total"] == {(): 3.0}
    # An engine that never locked vouches for nothing; b was never heard from.
    assert (samples["meshenc_vouches"], samples["meshenc_unproven"]) == ({(): 0.0}, {(): 0.0})
    assert samples["meshenc_neighbour_silent"] == {(("neighbour", "b"),): 1.0}
    # No ESP has arrived: the offset estimate does not exist yet and is left out, not NaN.
    assert samples.get("meshenc_neighbour_offset_seconds", {}) == {}
    assert "process_cpu_seconds_total" in samples


def test_the_endpoint_serves_each_origins_publishing_counters(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans

    class Handler:  # stands in for the runtime, which nothing here calls
        node_id = "a"

    common = {"skipped": 0, "superseded": 0}
    origins = (
        OriginStats("http://o1/live/", 40, 1, 0, retries=3, queued=2, reachable=True,
                    last_error=None, **common),
        OriginStats("http://o2/live/", 12, 5, 7, retries=9, queued=30, reachable=False,
                    last_error="refused", **common),
    )  # fmt: skip
    a = encoder("a", provider, ("b",))
    links = MeshLinks(Handler())  # type: ignore[arg-type]
    a.observe(links, RunStats(frames=1, skipped=0), (0.1, 0.001), None, origins)
    server = start_metrics_server("127.0.0.1:0")
    try:
        samples = scrape(server.port)
    finally:
        server.close()
    o1, o2 = (("origin", "http://o1/live/"),), (("origin", "http://o2/live/"),)
    assert samples["meshenc_origin_puts_total"] == {o1: 40.0, o2: 12.0}
    assert samples["meshenc_origin_put_failures_total"] == {o1: 1.0, o2: 5.0}
    assert samples["meshenc_origin_dropped_total"] == {o1: 0.0, o2: 7.0}
    assert samples["meshenc_origin_retries_total"] == {o1: 3.0, o2: 9.0}
    assert samples["meshenc_origin_queued"] == {o1: 2.0, o2: 30.0}
    assert samples["meshenc_origin_reachable"] == {o1: 1.0, o2: 0.0}
