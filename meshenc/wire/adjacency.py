"""The Mesh Manager's decisions as the encoders read them: adjacency documents and their homes.

The manager writes, per encoder, one :class:`AdjacencyDocument`; the encoder reads its own and
rewires. The same JSON text travels through a Kubernetes ConfigMap (data key
:data:`ADJACENCY_DATA_KEY`) or an etcd key (:class:`EtcdLayout`), so both actuators and both
topology sources share this one format and its one strict parser. In embedded mode encoders
announce themselves with a :class:`RegistrationRecord` under their own lease, which is how the
manager learns who is there. Nothing here does IO.

Document (JSON object, extra fields ignored so that newer managers stay readable)::

    {"epoch": 7, "encoder": "enc-3",
     "neighbours": {"enc-1": "10.0.0.1:7400", "enc-4": "enc-4.svc:7400"},
     "segment": "s1", "leader": "enc-1",
     "work": ["0/320x180", "0/640x360"], "work_version": 3}

``work`` is the manager's placement as it concerns this encoder: the work units
(``CHANNEL/RENDITION``) it runs. A document without it (an older manager, or a manager that
places no work) leaves the encoder doing all its work, as before placements existed; an empty
list means none. ``work_version`` numbers the manager's placements within one epoch, so that
``(epoch, work_version)`` orders documents even when the placement changed and the topology
did not (a drain, a capacity change).

Rules, checked on construction (so an invalid document cannot exist) and on parsing:

- ``epoch`` is an integer >= 1 (JSON booleans are not integers);
- ``encoder``, every neighbour id and non-empty ``segment``/``leader`` are 1 to
  ``MAX_ID_LENGTH`` characters of ``[A-Za-z0-9._-]`` (the wire's identifier rule);
- addresses are ``host:port`` by the wire's address rule;
- at most :data:`MAX_DOCUMENT_NEIGHBOURS` neighbours, none of them the encoder itself;
- ``work``, when present, is a list of at most :data:`MAX_DOCUMENT_UNITS` distinct unit ids,
  each two identifiers joined by one ``/``, and ``work_version`` an integer >= 1; without
  ``work``, ``work_version`` is absent (or 0);
- a serialised document is at most :data:`MAX_DOCUMENT_BYTES` long; the parser refuses longer
  input before decoding it.

Serialisation is canonical (sorted keys, no spaces): equal documents are equal bytes, which
is what lets the actuators skip writes that would change nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from meshenc.core.planner.load import MAX_UNITS_PER_ENCODER
from meshenc.wire.validation import (
    MAX_CAPACITY,
    MAX_NEIGHBOURS,
    InvalidMessage,
    _check_address,
    _check_id,
    _show,
    check_unit,
)

__all__ = [
    "ADJACENCY_DATA_KEY",
    "COMPONENT_LABEL",
    "ENCODER_LABEL",
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_NEIGHBOURS",
    "MAX_DOCUMENT_UNITS",
    "NAME_LABEL",
    "AdjacencyDocument",
    "EtcdLayout",
    "InvalidDocument",
    "RegistrationRecord",
    "adjacency_labels",
    "check_unit_id",
    "configmap_name",
    "parse_adjacency",
    "parse_registration",
]

ADJACENCY_DATA_KEY: Final = "adjacency.json"
"""The ConfigMap data key that holds the document."""
MAX_DOCUMENT_NEIGHBOURS: Final = MAX_NEIGHBOURS
"""Most neighbours one document may list (the planner's degree is at most 7)."""
MAX_DOCUMENT_UNITS: Final = MAX_UNITS_PER_ENCODER
"""Most work units one document may give its encoder (the most a measured capacity reaches)."""
MAX_DOCUMENT_BYTES: Final = 64 * 1024
"""Longest serialised document or registration record the parsers accept, bytes."""

NAME_LABEL: Final = "app.kubernetes.io/name"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
ENCODER_LABEL: Final = "meshenc.io/encoder"
_PREFIX_RE: Final = re.compile(r"(/[A-Za-z0-9._-]+)+")
_EPOCH_KEY: Final = ".epoch"


class InvalidDocument(InvalidMessage):
    """A document or record breaks a rule; ``field`` names it, ``reason`` says how."""


def _canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _wrap(check: Any, *args: Any, **kwargs: Any) -> None:
    """Run a wire check, re-raising its failure as :class:`InvalidDocument`."""
    try:
        check(*args, **kwargs)
    except InvalidDocument:
        raise
    except InvalidMessage as exc:
        raise InvalidDocument(exc.field, exc.reason) from None


def check_unit_id(unit: object, field: str = "work") -> str:
    """``unit`` if it is a work unit id, ``CHANNEL/RENDITION`` (two identifiers).

    Raises:
        InvalidDocument: naming ``field`` and the rule.
    """
    _check_str(unit, field)
    assert isinstance(unit, str)
    _wrap(check_unit, unit, field)
    return unit


def _check_version(version: object, has_work: bool) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidDocument("work_version", f"must be an integer, got {_show(version)}")
    if has_work and version < 1:
        raise InvalidDocument("work_version", f"must be >= 1 with work, got {version}")
    if not has_work and version != 0:
        raise InvalidDocument("work_version", "must be absent without work")


@dataclass(frozen=True, slots=True)
class AdjacencyDocument:
    """What one encoder must do under topology ``epoch``: whom to link to, and its segment.

    Attributes:
        epoch: the topology epoch, >= 1; it never decreases for a mesh.
        encoder: whose document this is.
        neighbours: neighbour id → ``host:port`` (a read-only mapping).
        segment: the encoder's segment, or "" when none is assigned.
        leader: the segment's elected leader as the manager knows it, or "".
        work: the work unit ids placed on the encoder (kept sorted), or None when the
            manager publishes no placement (the encoder then does all its work).
        work_version: the placement's number within the epoch, >= 1 with ``work``, else 0.

    Raises:
        InvalidDocument: on construction, when any rule of the module docstring is broken.
    """

    epoch: int
    encoder: str
    neighbours: Mapping[str, str] = field(default_factory=dict)
    segment: str = ""
    leader: str = ""
    work: tuple[str, ...] | None = None
    work_version: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 1:
            raise InvalidDocument("epoch", f"must be an integer >= 1, got {_show(self.epoch)}")
        _wrap(_check_str, self.encoder, "encoder")
        _wrap(_check_id, self.encoder, "encoder")
        _wrap(_check_str, self.segment, "segment")
        _wrap(_check_id, self.segment, "segment", allow_empty=True)
        _wrap(_check_str, self.leader, "leader")
        _wrap(_check_id, self.leader, "leader", allow_empty=True)
        if not isinstance(self.neighbours, Mapping):
            raise InvalidDocument(
                "neighbours", f"must map ids to addresses, got {_show(self.neighbours)}"
            )
        if len(self.neighbours) > MAX_DOCUMENT_NEIGHBOURS:
            raise InvalidDocument(
                "neighbours",
                f"must list at most {MAX_DOCUMENT_NEIGHBOURS}, got {len(self.neighbours)}",
            )
        copied: dict[str, str] = {}
        for neighbour, address in self.neighbours.items():
            _wrap(_check_str, neighbour, "neighbours")
            _wrap(_check_id, neighbour, "neighbours")
            where = f"neighbours[{neighbour}]"
            if neighbour == self.encoder:
                raise InvalidDocument(where, "an encoder cannot be its own neighbour")
            _wrap(_check_str, address, where)
            _wrap(_check_address, address, where)
            copied[neighbour] = address
        object.__setattr__(self, "neighbours", MappingProxyType(copied))
        _check_version(self.work_version, self.work is not None)
        if self.work is not None:
            if isinstance(self.work, str | bytes) or not isinstance(self.work, Sequence):
                raise InvalidDocument("work", f"must be a list of unit ids, got {_show(self.work)}")
            if len(self.work) > MAX_DOCUMENT_UNITS:
                raise InvalidDocument(
                    "work", f"must list at most {MAX_DOCUMENT_UNITS} units, got {len(self.work)}"
                )
            units = tuple(sorted(check_unit_id(unit) for unit in self.work))
            if len(set(units)) != len(units):
                raise InvalidDocument("work", "lists a unit twice")
            object.__setattr__(self, "work", units)

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_json(self) -> str:
        """The canonical JSON text (sorted keys, no spaces)."""
        value: dict[str, Any] = {
            "epoch": self.epoch,
            "encoder": self.encoder,
            "neighbours": dict(self.neighbours),
            "segment": self.segment,
            "leader": self.leader,
        }
        if self.work is not None:  # absent otherwise: the text older managers wrote
            value["work"] = list(self.work)
            value["work_version"] = self.work_version
        return _canonical(value)

    @property
    def order(self) -> tuple[int, int]:
        """``(epoch, work_version)``: a document that sorts lower than one applied is stale."""
        return self.epoch, self.work_version


def _check_str(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidDocument(field, f"must be a string, got {_show(value)}")


def _load_object(text: str | bytes, what: str) -> dict[str, Any]:
    if len(text) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(what, f"must be at most {MAX_DOCUMENT_BYTES} bytes, got {len(text)}")
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidDocument(what, f"is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidDocument(what, f"must be a JSON object, got {_show(value)}")
    return value


def parse_adjacency(text: str | bytes, *, expected_encoder: str | None = None) -> AdjacencyDocument:
    """Parse and validate a document.

    Args:
        text: the JSON text (str or UTF-8 bytes).
        expected_encoder: when given, the document must be this encoder's (a ConfigMap or key
            holding another encoder's document is a misconfiguration, not a topology).

    Raises:
        InvalidDocument: naming the field and the rule.
    """
    value = _load_object(text, "document")
    for name in ("epoch", "encoder", "neighbours"):
        if name not in value:
            raise InvalidDocument(name, "is missing")
    neighbours = value["neighbours"]
    if not isinstance(neighbours, dict):
        raise InvalidDocument(
            "neighbours", f"must be an object of id: address, got {_show(neighbours)}"
        )
    work = value.get("work")
    if work is not None and not isinstance(work, list):
        raise InvalidDocument("work", f"must be a list of unit ids, got {_show(work)}")
    document = AdjacencyDocument(
        epoch=value["epoch"],
        encoder=value["encoder"],
        neighbours=neighbours,
        segment=value.get("segment", ""),
        leader=value.get("leader", ""),
        work=None if work is None else tuple(work),
        work_version=value.get("work_version", 0),
    )
    if expected_encoder is not None and document.encoder != expected_encoder:
        raise InvalidDocument(
            "encoder", f"must be {expected_encoder!r} here, got {_show(document.encoder)}"
        )
    return document


@dataclass(frozen=True, slots=True)
class RegistrationRecord:
    """An encoder's announcement in embedded mode, kept under its lease.

    Attributes:
        address: where its mesh server listens, ``host:port``.
        capacity: work units it can run, 0..``MAX_CAPACITY``.
        zone: its failure zone, or "" when unknown.

    Raises:
        InvalidDocument: on construction, for a bad address, capacity or zone.
    """

    address: str
    capacity: int = 4
    zone: str = ""

    def __post_init__(self) -> None:
        _wrap(_check_str, self.address, "address")
        _wrap(_check_address, self.address, "address")
        if (
            isinstance(self.capacity, bool)
            or not isinstance(self.capacity, int)
            or not 0 <= self.capacity <= MAX_CAPACITY
        ):
            raise InvalidDocument(
                "capacity", f"must be an integer in [0, {MAX_CAPACITY}], got {_show(self.capacity)}"
            )
        _wrap(_check_str, self.zone, "zone")
        _wrap(_check_id, self.zone, "zone", allow_empty=True)

    def to_json(self) -> str:
        """The canonical JSON text."""
        return _canonical({"address": self.address, "capacity": self.capacity, "zone": self.zone})


def parse_registration(text: str | bytes) -> RegistrationRecord:
    """Parse and validate a registration record.

    Raises:
        InvalidDocument: naming the field and the rule.
    """
    value = _load_object(text, "record")
    if "address" not in value:
        raise InvalidDocument("address", "is missing")
    return RegistrationRecord(
        address=value["address"], capacity=value.get("capacity", 4), zone=value.get("zone", "")
    )


# --- where documents live ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdLayout:
    """The etcd keys of one mesh (``docs/actuators.md``), with ``P`` the prefix::

        P/topology/.epoch        the epoch of the last plan written (decimal)
        P/topology/<encoder>     that encoder's adjacency document
        P/encoders/<encoder>     its registration record, bound to its lease
        P/manager/leader         the active manager's id, bound to its lease
        P/manager/replicas       how many encoders the manager asks for (decimal; autoscaling)

    Raises:
        ValueError: for a prefix that is not ``/``-separated words without a trailing ``/``.
    """

    prefix: str = "/meshenc"

    def __post_init__(self) -> None:
        if _PREFIX_RE.fullmatch(self.prefix) is None:
            raise ValueError(
                f"etcd prefix must look like /meshenc ('/'-separated words of [A-Za-z0-9._-], "
                f"no trailing '/'), got {self.prefix!r}"
            )

    @property
    def topology(self) -> bytes:
        """The prefix of every topology key."""
        return f"{self.prefix}/topology/".encode()

    @property
    def epoch(self) -> bytes:
        return self.topology + _EPOCH_KEY.encode()

    def document(self, encoder: str) -> bytes:
        """The key of ``encoder``'s document.

        Raises:
            ValueError: for an id that is not a valid identifier, or is the reserved
                ``.epoch``.
        """
        _wrap(_check_id, encoder, "encoder")
        if encoder == _EPOCH_KEY:
            raise ValueError(f"encoder id {encoder!r} is reserved in the etcd layout")
        return self.topology + encoder.encode()

    def encoder_of(self, key: bytes) -> str | None:
        """The encoder whose document ``key`` holds, or None for other keys under the prefix."""
        if not key.startswith(self.topology):
            return None
        name = key[len(self.topology) :].decode(errors="replace")
        return None if name == _EPOCH_KEY or "/" in name or not name else name

    @property
    def encoders(self) -> bytes:
        """The prefix of every registration key."""
        return f"{self.prefix}/encoders/".encode()

    def registration(self, encoder: str) -> bytes:
        _wrap(_check_id, encoder, "encoder")
        return self.encoders + encoder.encode()

    def registered(self, key: bytes) -> str | None:
        """The encoder a registration ``key`` belongs to, or None for a malformed key."""
        if not key.startswith(self.encoders):
            return None
        name = key[len(self.encoders) :].decode(errors="replace")
        try:
            _check_id(name, "encoder")
        except InvalidMessage:
            return None
        return name

    @property
    def manager_leader(self) -> bytes:
        return f"{self.prefix}/manager/leader".encode()

    @property
    def replicas(self) -> bytes:
        """Where the manager's autoscaler asks the launcher for encoders (embedded mode)."""
        return f"{self.prefix}/manager/replicas".encode()


def configmap_name(pod: str) -> str:
    """``<pod>-adjacency``, i.e. ``<statefulset>-<ordinal>-adjacency``: the ConfigMap that
    holds ``pod``'s document (a pod's name already begins with its StatefulSet's)."""
    return f"{pod}-adjacency"


def adjacency_labels(pod: str) -> dict[str, str]:
    """The labels of an adjacency ConfigMap (the manager lists its own ConfigMaps by them)."""
    return {NAME_LABEL: "meshenc", COMPONENT_LABEL: "adjacency", ENCODER_LABEL: pod}
