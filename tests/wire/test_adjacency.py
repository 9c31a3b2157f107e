"""The adjacency document, the registration record and the etcd key layout (pure, no IO)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.wire.adjacency import (
    MAX_DOCUMENT_BYTES,
    AdjacencyDocument,
    EtcdLayout,
    InvalidDocument,
    RegistrationRecord,
    adjacency_labels,
    configmap_name,
    parse_adjacency,
    parse_registration,
)

GOOD: dict[str, Any] = {
    "epoch": 4,
    "encoder": "enc-1",
    "neighbours": {"enc-2": "10.0.0.2:7400", "enc-3": "enc-3.meshenc-encoder.media.svc:7400"},
    "segment": "s1",
    "leader": "enc-2",
}


def test_round_trip_is_canonical() -> None:
    """Parsing and serialising gives back equal documents and byte-equal canonical text,
    whatever the key order of the input; unknown fields are ignored."""
    text = json.dumps({"future": True, **dict(reversed(list(GOOD.items())))}, indent=2)
    document = parse_adjacency(text, expected_encoder="enc-1")
    assert document.neighbours == GOOD["neighbours"]
    assert (document.epoch, document.segment, document.leader) == (4, "s1", "enc-2")
    assert document.to_json() == json.dumps(GOOD, sort_keys=True, separators=(",", ":"))
    assert parse_adjacency(document.to_json()) == document
    assert parse_adjacency(json.dumps({k: GOOD[k] for k in ("epoch", "encoder", "neighbours")}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"epoch": 0}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"epoch": "4"}, "epoch"),
        ({"epoch": 4.0}, "epoch"),
        ({"encoder": ""}, "encoder"),
        ({"encoder": "a/b"}, "encoder"),
        ({"encoder": "x" * 129}, "encoder"),
        ({"encoder": 7}, "encoder"),
        ({"neighbours": ["enc-2"]}, "neighbours"),
        ({"neighbours": {"enc-1": "10.0.0.1:7400"}}, "neighbours[enc-1]"),
        ({"neighbours": {"enc-2": "10.0.0.2"}}, "neighbours[enc-2]"),
        ({"neighbours": {"enc-2": "10.0.0.2:0"}}, "neighbours[enc-2]"),
        ({"neighbours": {"enc-2": "bad host:1"}}, "neighbours[enc-2]"),
        ({"neighbours": {"enc-2": 7400}}, "neighbours[enc-2]"),
        ({"neighbours": {"é": "10.0.0.2:1"}}, "neighbours"),
        ({"neighbours": {f"n{i}": "10.0.0.2:1" for i in range(65)}}, "neighbours"),
        ({"segment": "s 1"}, "segment"),
        ({"leader": None}, "leader"),
    ],
)
def test_each_rule_is_enforced(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDocument) as raised:
        parse_adjacency(json.dumps({**GOOD, **change}))
    assert raised.value.field == field
    with pytest.raises(InvalidDocument):
        AdjacencyDocument(**{**GOOD, **change})


def test_a_placement_rides_in_the_document_and_only_when_there_is_one() -> None:
    """``work`` and ``work_version`` round-trip (units kept sorted); a document without a
    placement has the text it had before placements existed; ``order`` puts a newer placement
    of one epoch after an older one, and any document of a newer epoch after both."""
    placed = parse_adjacency(
        json.dumps({**GOOD, "work": ["ch.1/640x360", "0/320x180"], "work_version": 3})
    )
    assert placed.work == ("0/320x180", "ch.1/640x360") and placed.work_version == 3
    assert parse_adjacency(placed.to_json()) == placed
    assert json.loads(placed.to_json())["work"] == ["0/320x180", "ch.1/640x360"]
    unplaced = parse_adjacency(json.dumps(GOOD))
    assert (unplaced.work, unplaced.work_version) == (None, 0)
    assert "work" not in unplaced.to_json()
    assert parse_adjacency(json.dumps({**GOOD, "work": [], "work_version": 1})).work == ()
    newer = AdjacencyDocument(4, "enc-1", work=("0/a",), work_version=4)
    later_epoch = AdjacencyDocument(5, "enc-1", work=("0/a",), work_version=1)
    assert placed.order < newer.order < later_epoch.order
    assert unplaced.order < placed.order


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"work": "0/a", "work_version": 1}, "work"),
        ({"work": {"0/a": 1}, "work_version": 1}, "work"),
        ({"work": ["0a"], "work_version": 1}, "work"),
        ({"work": ["0/a/b"], "work_version": 1}, "work"),
        ({"work": ["/a"], "work_version": 1}, "work"),
        ({"work": ["0/a b"], "work_version": 1}, "work"),
        ({"work": [7], "work_version": 1}, "work"),
        ({"work": ["0/a", "0/a"], "work_version": 1}, "work"),
        ({"work": [f"0/r{i}" for i in range(65)], "work_version": 1}, "work"),
        ({"work": ["0/a"]}, "work_version"),
        ({"work": ["0/a"], "work_version": 0}, "work_version"),
        ({"work": ["0/a"], "work_version": True}, "work_version"),
        ({"work": ["0/a"], "work_version": "2"}, "work_version"),
        ({"work_version": 2}, "work_version"),
    ],
)
def test_each_placement_rule_is_enforced(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDocument) as raised:
        parse_adjacency(json.dumps({**GOOD, **change}))
    assert raised.value.field == field


@pytest.mark.parametrize(
    "text",
    ["", "null", "[]", "4", '{"epoch": 1}', "{", b"\xff\xfe", " " * (MAX_DOCUMENT_BYTES + 1)],
)
def test_hostile_text_is_refused_clearly(text: str | bytes) -> None:
    with pytest.raises(InvalidDocument) as raised:
        parse_adjacency(text)
    assert raised.value.reason


def test_a_document_for_another_encoder_is_refused() -> None:
    with pytest.raises(InvalidDocument, match="must be 'enc-9' here"):
        parse_adjacency(json.dumps(GOOD), expected_encoder="enc-9")


def test_documents_are_read_only() -> None:
    document = parse_adjacency(json.dumps(GOOD))
    with pytest.raises(TypeError):
        document.neighbours["x"] = "10.0.0.1:1"  # type: ignore[index]
    assert hash(document) == hash(parse_adjacency(document.to_json()))


ids = st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True)
addresses = st.builds(
    "{}.{}.{}.{}:{}".format,
    *[st.integers(0, 255)] * 4,
    st.integers(1, 65535),
)


@given(
    epoch=st.integers(1, 2**62),
    encoder=ids,
    neighbours=st.dictionaries(ids, addresses, max_size=8),
    segment=st.one_of(st.just(""), ids),
)
def test_any_valid_document_round_trips(
    epoch: int, encoder: str, neighbours: dict[str, str], segment: str
) -> None:
    neighbours.pop(encoder, None)
    document = AdjacencyDocument(epoch, encoder, neighbours, segment)
    assert parse_adjacency(document.to_json().encode()) == document


def test_registration_record() -> None:
    record = parse_registration(b'{"address": "127.0.0.1:7400", "capacity": 3, "zone": "z1"}')
    assert record == RegistrationRecord("127.0.0.1:7400", 3, "z1")
    assert parse_registration(record.to_json()) == record
    for bad in (
        '{"capacity": 1}',
        '{"address": "x:1", "capacity": -1}',
        '{"address": "x"}',
        '{"address": "x:1", "capacity": true}',
        "[]",
    ):
        with pytest.raises(InvalidDocument):
            parse_registration(bad)


def test_etcd_layout() -> None:
    layout = EtcdLayout("/mesh/a")
    assert layout.document("enc-1") == b"/mesh/a/topology/enc-1"
    assert layout.epoch == b"/mesh/a/topology/.epoch"
    assert layout.encoder_of(b"/mesh/a/topology/enc-1") == "enc-1"
    assert layout.encoder_of(layout.epoch) is None
    assert layout.registration("enc-1") == b"/mesh/a/encoders/enc-1"
    assert layout.registered(b"/mesh/a/encoders/enc-1") == "enc-1"
    assert layout.registered(b"/mesh/a/encoders/a/b") is None
    assert layout.manager_leader == b"/mesh/a/manager/leader"
    with pytest.raises(ValueError, match="reserved"):
        layout.document(".epoch")
    for prefix in ("", "mesh", "/mesh/", "/me sh"):
        with pytest.raises(ValueError, match="prefix"):
            EtcdLayout(prefix)


def test_configmap_name_and_labels() -> None:
    assert configmap_name("meshenc-encoder-3") == "meshenc-encoder-3-adjacency"
    assert adjacency_labels("meshenc-encoder-3")["meshenc.io/encoder"] == "meshenc-encoder-3"
