"""The encoder's settings: one validated model, filled from flags or environment variables.

Every flag of ``meshenc encoder`` has an environment variable of the same meaning
(``--peers`` ↔ ``MESHENC_PEERS``); the Helm chart sets the variables. Values are validated once
at start, and a bad one stops the encoder with a message that names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate

__all__ = ["EncoderSettings", "parse_peers", "parse_size"]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def _check_address(value: str, what: str, *, lowest_port: int = 1) -> str:
    match = _ADDRESS.match(value)
    if not match or not lowest_port <= int(match.group(2)) < 65536:
        raise ValueError(
            f"{what} must be HOST:PORT with a port in {lowest_port}..65535, got {value!r}"
        )
    return value


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
    """``"enc-1=10.0.0.2:7400,enc-2=10.0.0.3:7400"`` → ``{"enc-1": "10.0.0.2:7400", ...}``."""
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not _ID.match(name):
            raise ValueError(f"peer {item!r} must be ID=HOST:PORT")
        if name in peers:
            raise ValueError(f"peer {name!r} is listed twice")
        peers[name] = _check_address(address, f"peer {name!r}")
    return peers


class EncoderSettings(BaseModel):
    """Everything one encoder process needs to know at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    listen: str = "0.0.0.0:7400"
    peers: dict[str, str] = Field(default_factory=dict)
    out: Path
    source: str | None = None
    size: tuple[Annotated[int, Field(ge=16, le=3840)], Annotated[int, Field(ge=16, le=2160)]] = (
        640,
        360,
    )
    fps: str = "30"
    #: Frames per GOP, which is also one segment.
    gop: Annotated[int, Field(ge=1, le=600)] = 60
    bitrate_kbps: Annotated[int, Field(ge=64, le=200_000)] = 1500
    strategy: Strategy = Strategy.PREDICTIVE
    #: Injected clock faults (labelled as such in logs and state): drift, offset, read jitter.
    drift_ppm: Annotated[float, Field(ge=-1000.0, le=1000.0)] = 0.0
    offset_ms: Annotated[float, Field(ge=-10_000.0, le=10_000.0)] = 0.0
    jitter_ms: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    #: Injected ingest delay of the live source (ms), emulating a longer path to this encoder.
    ingest_delay_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 0.0
    #: Stop after this many seconds (None: run until SIGTERM).
    duration: Annotated[float, Field(gt=0.0)] | None = None
    seed: int = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_address(value, "listen", lowest_port=0)

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
        return self

    @property
    def frame_rate(self) -> FrameRate:
        return FrameRate.parse(self.fps)
