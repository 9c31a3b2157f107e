"""The encoder's settings: one validated model, filled from flags or environment variables.

Every flag of ``meshenc encoder`` has an environment variable of the same meaning
(``--peers`` ↔ ``MESHENC_PEERS``); the Helm chart sets the variables. Values are validated once
at start, and a bad one stops the encoder with a message that names it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.wire.address import check_address, parse_address_list
from meshenc.wire.validation import MAX_CAPACITY, InvalidMessage, check_channel_name
from services.common.etcd import (
    DEFAULT_ETCD_PREFIX,
    DEFAULT_LEASE_TTL,
    EtcdSettings,
    parse_endpoints,
)
from services.common.listen import ListenAddress, MetricsListenAddress, OutputListenAddress
from services.common.peer_limits import PeerLimits
from services.common.tls import TlsFiles
from services.encoder.media.containers import SegmentFormat
from services.encoder.media.ingest import InputLossPolicy
from services.encoder.media.ladder import CHANNEL, MAX_RUNGS, Rung, parse_ladder, top_rung
from services.encoder.media.publish import origin_url

__all__ = [
    "DEFAULT_ETCD_PREFIX",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_REGISTRY_TTL",
    "MAX_CHANNELS",
    "EncoderSettings",
    "EtcdSettings",
    "SegmentFormat",
    "TopologyMode",
    "parse_channel",
    "parse_endpoints",
    "parse_peers",
    "parse_size",
]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

DEFAULT_REGISTRY_TTL = 30.0
"""Seconds the registry keeps an encoder's record after its last refresh (refreshed every
third of that), so a dead encoder's record is gone at most this long after it died."""


MAX_CHANNELS = 16
"""Channels one encoder process may encode (each decodes its source and runs a timeline)."""


def parse_channel(text: str) -> tuple[str, str]:
    """``"news=udp://239.0.0.1:5000"`` → ``("news", "udp://239.0.0.1:5000")``; ValueError
    naming the rule for anything else (the name also names the channel's folder)."""
    name, sep, source = text.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not source:
        raise ValueError(f"a channel is NAME=SOURCE, got {text!r}")
    try:
        check_channel_name(name)
    except InvalidMessage as exc:
        raise ValueError(f"channel {text!r}: the name {exc.reason}") from None
    return name, source


def parse_size(text: str) -> tuple[int, int]:
    """``"640x360"`` → ``(640, 360)``; ValueError for anything else."""
    width, sep, height = text.strip().lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT, e.g. 640x360, got {text!r}") from None


def parse_peers(text: str) -> dict[str, str]:
    """``"enc-1=10.0.0.2:7400,enc-2"`` → ``{"enc-1": "10.0.0.2:7400", "enc-2": ""}``.

    A bare id has no address yet: the encoder resolves it through the DHT registry
    (``--registry``), which the settings check.
    """
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not _ID.match(name):
            raise ValueError(f"peer {item!r} must be ID=HOST:PORT or ID")
        if name in peers:
            raise ValueError(f"peer {name!r} is listed twice")
        peers[name] = check_address(address, f"peer {name!r}") if sep else ""
    return peers


class TopologyMode(StrEnum):
    """Where the encoder learns its neighbours (``--topology``)."""

    STATIC = "static"  # --peers, for good
    ETCD = "etcd"  # its key in etcd, written by the manager (embedded mode)
    KUBERNETES = "kubernetes"  # its ConfigMap, written by the manager


class EncoderSettings(BaseModel):
    """Everything one encoder process needs to know at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    listen: ListenAddress = "0.0.0.0:7400"
    peers: dict[str, str] = Field(default_factory=dict)
    out: Path
    source: str | None = None
    #: The channel ``source`` feeds: a placement's units ``<channel>/<rung>`` are this
    #: runtime's, and its Hello names it.
    channel: str = CHANNEL
    #: Several channels in one process (``--channel NAME=SOURCE``, in order), replacing
    #: ``source``: each with its own decode, timeline, leadership and folder ``out/<name>``
    #: (``channel_settings``). Empty: the one channel ``channel`` from ``source``, in ``out``.
    channels: dict[str, str] = Field(default_factory=dict, max_length=MAX_CHANNELS)
    size: tuple[Annotated[int, Field(ge=16, le=3840)], Annotated[int, Field(ge=16, le=2160)]] = (
        640,
        360,
    )
    fps: str = "30"
    #: Frames per GOP, which is also one segment.
    gop: Annotated[int, Field(ge=1, le=600)] = 60
    bitrate_kbps: Annotated[int, Field(ge=64, le=200_000)] = 1500
    #: An ABR ladder (``--ladder``): one rendition per rung, each in a folder of its own under
    #: ``out`` with a master playlist above; replaces ``size`` and ``bitrate_kbps``. Empty: one
    #: rendition of ``size`` at ``bitrate_kbps`` straight into ``out``.
    ladder: tuple[Rung, ...] = ()
    #: How many rungs of a slot are encoded at once (``--rung-threads``; 1: one after
    #: another). The bytes are the same either way; see ``services.encoder.pipeline``.
    rung_threads: Annotated[int, Field(ge=1, le=MAX_RUNGS)] = 1
    strategy: Strategy = Strategy.PREDICTIVE
    #: Injected clock faults (labelled as such in logs and state): drift, offset, read jitter.
    drift_ppm: Annotated[float, Field(ge=-1000.0, le=1000.0)] = 0.0
    offset_ms: Annotated[float, Field(ge=-10_000.0, le=10_000.0)] = 0.0
    jitter_ms: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    #: Frame periods without a picture before the input counts as lost (then the encoder fills
    #: in on its own cadence), and seconds it repeats the last picture before sending black.
    input_loss_frames: Annotated[int, Field(ge=1, le=600)] = 30
    input_loss_repeat_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 1.0
    #: HTTP origins (http://HOST[:PORT][/PATH]) to PUT the segments this encoder can vouch for,
    #: and its playlist while it leads its segment; none when empty.
    publish: tuple[str, ...] = ()
    #: HOST:PORT to serve the output folder on over HTTP, read-only (GET/HEAD, the origin's
    #: headers); off when None.
    serve_output: OutputListenAddress | None = None
    #: What the segments are: MPEG-TS (HLS) or CMAF (fMP4 for HLS and DASH, with an init).
    output_format: SegmentFormat = SegmentFormat.TS
    #: Stop after this many seconds (None: run until SIGTERM).
    duration: Annotated[float, Field(gt=0.0)] | None = None
    seed: int = 0
    #: The group of encoders this one belongs to; each segment elects one leader...
    segment: str = "default"
    #: ...in each region: the region (zone) of this encoder, "" when none. Also the zone of
    #: its etcd registration, so the manager plans bridges between regions.
    region: str = ""
    #: Leader election through etcd; off when None.
    etcd: EtcdSettings | None = None
    #: Take over from a leader the mesh lost (fenced, by majority); off: lease expiry only.
    fast_failover: bool = True
    #: Registry replicas (HOST:PORT) to publish this encoder's record in; off when empty.
    registry: tuple[str, ...] = ()
    #: Work units this encoder can take (its record in the registry and in etcd).
    capacity: Annotated[int, Field(ge=0, le=MAX_CAPACITY)] = 4
    #: Seconds the registry keeps the record after its last refresh.
    registry_ttl: Annotated[float, Field(ge=1.0, le=86_400.0)] = DEFAULT_REGISTRY_TTL
    #: HOST:PORT of the Prometheus metrics endpoint; off when None.
    metrics_listen: MetricsListenAddress | None = None
    #: The Mesh Manager (HOST:PORT): health reports and escalations go there; none when None.
    manager: str | None = None
    #: Where neighbours come from; None: etcd with --etcd and --manager, else static.
    topology: TopologyMode | None = None
    #: The address others dial (HOST:PORT); None: the listen address.
    advertise: str | None = None
    #: The pod's namespace (the kubernetes topology reads the encoder's ConfigMap there).
    namespace: str = "default"
    #: Mutual TLS (CA, certificate, key) for the mesh server and every channel; plaintext if
    #: None. The certificate's identity must be this encoder's id.
    tls: TlsFiles | None = None
    #: HOST:PORT serving the health service alone, in plaintext (probes); none when None.
    health_listen: ListenAddress | None = None
    #: What one peer may open and send (streams at once, messages per second).
    peer_limits: PeerLimits = PeerLimits()

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        try:
            check_channel_name(value)
        except InvalidMessage as exc:
            raise ValueError(exc.reason) from None
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            parse_channel(f"{name}={source}")
        return value

    @model_validator(mode="after")
    def _channels_replace(self) -> Self:
        given = sorted({"source", "channel"} & self.model_fields_set)
        if self.channels and given:
            raise ValueError(
                "--channel gives every channel its name and source: leave out "
                + " and ".join(f"--{name}" for name in given)
            )
        return self

    def channel_settings(self) -> tuple[EncoderSettings, ...]:
        """The settings of each channel this process encodes: itself without ``channels``;
        else, per channel in order, these with its name, its source, its folder
        ``out/<name>`` and its origins' path ``URL/<name>``. Only the channels' own parts
        are read from them: the process's server, control plane and output server are
        these settings'."""
        if not self.channels:
            return (self,)
        return tuple(
            self.model_copy(
                update={
                    "channel": name,
                    "source": source,
                    "channels": {},
                    "out": self.out / name,
                    "publish": tuple(f"{url}/{name}" for url in self.publish),
                    "serve_output": None,
                }
            )
            for name, source in self.channels.items()
        )

    @property
    def leadership_etcd(self) -> EtcdSettings | None:
        """Where this channel's segment elects its leader: ``etcd``'s prefix for the
        channel ``CHANNEL`` (as with one channel), ``<prefix>/channels/<name>`` for any
        other, so that each channel has a leader of its own."""
        if self.etcd is None or self.channel == CHANNEL:
            return self.etcd
        return self.etcd.model_copy(
            update={"prefix": f"{self.etcd.prefix}/channels/{self.channel}"}
        )

    @field_validator("segment")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value and not _ID.match(value):
            raise ValueError("must be empty or 1-128 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("publish")
    @classmethod
    def _publish(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(origin_url(url) for url in value)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return parse_address_list(value, "registry replica")

    @field_validator("manager", "advertise")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value, "address")

    @field_validator("ladder", mode="before")
    @classmethod
    def _ladder(cls, value: object) -> object:
        return parse_ladder(value) if isinstance(value, str) and value.strip() else value

    @model_validator(mode="after")
    def _ladder_replaces(self) -> Self:
        given = sorted({"size", "bitrate_kbps"} & self.model_fields_set)
        if self.ladder and given:
            raise ValueError(
                "--ladder gives every rung its size and bitrate: leave out "
                + " and ".join(f"--{name.replace('_', '-')}" for name in given)
            )
        if self.rung_threads > 1 and not self.ladder:
            raise ValueError("--rung-threads encodes the rungs of a --ladder at once: give one")
        return self

    @property
    def picture_size(self) -> tuple[int, int]:
        """The size pictures are decoded at: the top rung's, else ``size``."""
        if self.ladder:
            top = top_rung(self.ladder)
            return top.width, top.height
        return self.size

    @property
    def follows_placement(self) -> bool:
        """Whether the manager's placement decides which rungs this encoder writes: a ladder
        whose documents come from the manager (etcd or kubernetes topology). Such a mesh's
        encoders may hold different rungs, so their ESPs hash each slot's input
        (``media.ladder.input_hash``), not the rungs' access units."""
        return bool(self.ladder) and self.topology_mode in (
            TopologyMode.ETCD,
            TopologyMode.KUBERNETES,
        )

    @property
    def mesh_bitrate_kbps(self) -> int:
        """The bitrate the mesh starts with and agrees changes of: the top rung's, else
        ``bitrate_kbps`` (a change scales every rung alike, see ``media.ladder``)."""
        return top_rung(self.ladder).bitrate_kbps if self.ladder else self.bitrate_kbps

    @model_validator(mode="after")
    def _topology_needs(self) -> Self:
        if self.topology_mode is TopologyMode.ETCD and self.etcd is None:
            raise ValueError("--topology etcd needs --etcd")
        return self

    @property
    def input_loss(self) -> InputLossPolicy:
        return InputLossPolicy(self.input_loss_frames, self.input_loss_repeat_s)

    @property
    def topology_mode(self) -> TopologyMode:
        """The topology source: as given, else etcd when etcd and a manager are, else static."""
        if self.topology is not None:
            return self.topology
        if self.etcd is not None and self.manager is not None and not self.peers:
            return TopologyMode.ETCD
        return TopologyMode.STATIC

    @property
    def advertise_address(self) -> str:
        """Where neighbours reach this encoder."""
        return self.advertise or self.listen

    @field_validator("size")
    @classmethod
    def _even(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] % 2 or value[1] % 2:
            raise ValueError("width and height must be even (4:2:0 video)")
        return value

    @field_validator("fps")
    @classmethod
    def _fps(cls, value: str) -> str:
        FrameRate.parse(value)
        return value

    @model_validator(mode="after")
    def _not_own_peer(self) -> Self:
        if self.id in self.peers:
            raise ValueError(f"encoder {self.id!r} lists itself as a peer")
        unresolved = sorted(peer for peer, address in self.peers.items() if not address)
        if unresolved and not self.registry:
            raise ValueError(
                f"peers {', '.join(unresolved)} have no address: give ID=HOST:PORT, or "
                "--registry to resolve them"
            )
        return self

    @property
    def frame_rate(self) -> FrameRate:
        return FrameRate.parse(self.fps)
