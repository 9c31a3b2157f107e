"""The registry node's settings: one validated model, filled from flags or environment variables.

Every flag of ``meshenc registry`` has an environment variable of the same meaning
(``--seeds`` ↔ ``MESHENC_SEEDS``); the Helm chart sets the variables. Values are validated once
at start, and a bad one stops the node with a message that names it.
"""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshenc.core.kademlia import DEFAULT_ALPHA, DEFAULT_K, ID_BYTES, MAX_K
from meshenc.wire.address import check_address, parse_address, parse_address_list
from services.common.listen import ListenAddress, MetricsListenAddress
from services.common.peer_limits import PeerLimits
from services.common.tls import TlsFiles

__all__ = ["RegistrySettings", "parse_seeds"]

_NODE_ID = re.compile(rf"^[0-9a-fA-F]{{{2 * ID_BYTES}}}$")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "::"})


def parse_seeds(text: str) -> list[str]:
    """``"10.0.0.2:7500, registry-0.registry:7500"`` → a list of addresses (duplicates once)."""
    return list(parse_address_list(text, "seed"))


class RegistrySettings(BaseModel):
    """Everything one registry node needs to know at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: ListenAddress = "0.0.0.0:7500"
    #: Where other nodes and clients reach this one; default: the listen address, with this
    #: host's name in place of a wildcard host and the bound port in place of port 0.
    advertise: str | None = None
    #: Registry nodes to join through (any one that answers is enough).
    seeds: list[str] = Field(default_factory=list)
    #: This node's Kademlia id, 40 hex digits; default: random at every start.
    node_id: str | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K
    alpha: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_ALPHA
    #: Seconds one call to another node may take.
    rpc_timeout: Annotated[float, Field(gt=0.0, le=60.0)] = 2.0
    #: Seconds without a lookup in a bucket's range before it is refreshed.
    bucket_refresh_interval: Annotated[float, Field(gt=0.0)] = 600.0
    #: Seconds after which a held record is republished to the k closest nodes.
    republish_interval: Annotated[float, Field(gt=0.0)] = 60.0
    #: Seconds between two runs of the periodic work (expiry, refresh, republish).
    tick_interval: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    #: Seconds a join keeps retrying its seeds before the node serves alone (and retries
    #: later, whenever its routing table is empty).
    join_timeout: Annotated[float, Field(gt=0.0)] = 30.0
    #: HOST:PORT of the Prometheus metrics endpoint; off when None.
    metrics_listen: MetricsListenAddress | None = None
    #: Mutual TLS (CA, certificate, key) for the server and every channel; plaintext if None.
    tls: TlsFiles | None = None
    #: HOST:PORT serving the health service alone, in plaintext (probes); none when None.
    health_listen: ListenAddress | None = None
    #: What one peer may open and send (streams at once, messages per second).
    peer_limits: PeerLimits = PeerLimits()

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None:
            host, _ = parse_address(check_address(value, "advertise"))
            if host in _WILDCARD_HOSTS:
                raise ValueError(f"advertise must name a reachable host, got {value!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[str]) -> list[str]:
        return [check_address(s, f"seed {s!r}") for s in value]

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is not None and not _NODE_ID.match(value):
            raise ValueError(f"must be {2 * ID_BYTES} hex digits (160 bits), got {value!r}")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _alpha_within_k(self) -> Self:
        if self.alpha > self.k:
            raise ValueError(f"alpha ({self.alpha}) must not exceed k ({self.k})")
        return self

    @property
    def listen_host(self) -> str:
        return parse_address(self.listen, lowest_port=0)[0]

    @property
    def listens_everywhere(self) -> bool:
        return self.listen_host in _WILDCARD_HOSTS
