"""What the end-to-end tests share: the services fixture's layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Encoder id to injected clock offset (ms): different, so the mesh has something to correct.
ENCODERS = {"a": 25.0, "b": -25.0}
GOP = 30


@dataclass(frozen=True, slots=True)
class Services:
    """Where the running services answer."""

    encoders: dict[str, str]
    manager: str
    etcd: str
    folder: Path
