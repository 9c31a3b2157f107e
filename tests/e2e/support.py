"""What the end-to-end tests share: the services fixture's layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.tls import TlsFiles

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
    #: The operator's certificate: the services speak mutual TLS only.
    tls: TlsFiles

    @property
    def env(self) -> dict[str, str]:
        """The variables that give a command the operator's certificate."""
        return {
            "MESHENC_TLS_CA": str(self.tls.ca),
            "MESHENC_TLS_CERT": str(self.tls.cert),
            "MESHENC_TLS_KEY": str(self.tls.key),
        }
