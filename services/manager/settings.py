"""The manager's settings: one validated model, filled from flags or environment variables.

Every flag of ``meshenc manager`` has an environment variable of the same meaning
(``--listen`` ↔ ``MESHENC_LISTEN``); the Helm chart sets the variables. Values are validated
once at start, and a bad one stops the manager with a message that names it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshenc.core.planner import ManagerConfig, PlannerConfig
from meshenc.core.planner.autoscale import AutoscaleConfig
from meshenc.core.planner.load import LoadConfig
from meshenc.core.planner.placement import PlacementConfig, WorkUnit
from meshenc.core.planner.topology import MAX_DEGREE, TopologyConfig
from meshenc.wire.adjacency import EtcdLayout, check_unit_id
from services.common.etcd import EtcdSettings
from services.common.listen import ListenAddress, MetricsListenAddress
from services.common.peer_limits import PeerLimits
from services.common.tls import TlsFiles
from services.manager.service import DEFAULT_RECONNECT_GRACE, DEFAULT_TICK_INTERVAL

__all__ = ["DEFAULT_LISTEN", "ActuatorKind", "ManagerSettings", "parse_work_units"]

DEFAULT_LISTEN = "0.0.0.0:7600"
"""Where the manager serves by default (the chart's manager port)."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes object name


class ActuatorKind(StrEnum):
    """Where decisions go: etcd keys (embedded mode) or ConfigMaps (Kubernetes)."""

    EMBEDDED = "embedded"
    KUBERNETES = "kubernetes"


def parse_work_units(text: str) -> tuple[WorkUnit, ...]:
    """``"news/720p,news/360p"`` → work units; ValueError naming a malformed or repeated
    item (each part an identifier, as the encoders' documents carry it)."""
    units: list[WorkUnit] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            check_unit_id(item)
        except ValueError:
            raise ValueError(
                f"work unit {item!r} must be CHANNEL/RENDITION, each 1-128 characters of "
                "[A-Za-z0-9._-]"
            ) from None
        channel, _, rendition = item.partition("/")
        unit = WorkUnit(channel, rendition)
        if unit in units:
            raise ValueError(f"work unit {item!r} is given twice")
        units.append(unit)
    return tuple(units)


class ManagerSettings(BaseModel):
    """Everything one manager process needs to know at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: ListenAddress = DEFAULT_LISTEN
    actuator: ActuatorKind
    #: etcd: where decisions go in embedded mode, and the HA election in both modes; None:
    #: no etcd (Kubernetes with one manager replica).
    etcd: EtcdSettings | None = None
    #: Kubernetes: the encoders' namespace and StatefulSet.
    namespace: str | None = None
    encoder_statefulset: str | None = None
    #: Autoscaling, on with both bounds (``meshenc.core.planner.autoscale``).
    autoscale_min: Annotated[int, Field(ge=0)] | None = None
    autoscale_max: Annotated[int, Field(ge=1)] | None = None
    autoscale_high_water: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    autoscale_low_water: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.30
    autoscale_cooldown: Annotated[float, Field(gt=0.0, le=86400.0)] = 120.0
    autoscale_drain_grace: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0
    autoscale_drain_timeout: Annotated[float, Field(gt=0.0, le=86400.0)] = 120.0
    #: Encode time per frame that counts as a full encoder (1/fps of the encoders).
    frame_budget: Annotated[float, Field(gt=0.0, le=10.0)] = 0.040
    degree_min: Annotated[int, Field(ge=2, le=MAX_DEGREE)] = 3
    degree_max: Annotated[int, Field(ge=2, le=MAX_DEGREE)] = 7
    #: Seconds without a health report before an encoder is taken out.
    report_timeout: Annotated[float, Field(gt=0.0, le=3600.0)] = 5.0
    #: Seconds an encoder whose health stream ended may take to open a new one.
    reconnect_grace: Annotated[float, Field(gt=0.0, le=3600.0)] = DEFAULT_RECONNECT_GRACE
    tick_interval: Annotated[float, Field(gt=0.0, le=60.0)] = DEFAULT_TICK_INTERVAL
    work_units: tuple[WorkUnit, ...] = ()
    #: Encoders each work unit runs on.
    redundancy: Annotated[int, Field(ge=1, le=16)] = 2
    #: HOST:PORT of the Prometheus metrics endpoint; off when None.
    metrics_listen: MetricsListenAddress | None = None
    #: Mutual TLS (CA, certificate, key) for the server; plaintext when None.
    tls: TlsFiles | None = None
    #: HOST:PORT serving the health service alone, in plaintext (probes); none when None.
    health_listen: ListenAddress | None = None
    #: What one peer may open and send (streams at once, messages per second).
    peer_limits: PeerLimits = PeerLimits()

    @field_validator("namespace", "encoder_statefulset")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"must be a Kubernetes name (lower-case, digits, '-'), got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.actuator is ActuatorKind.EMBEDDED and self.etcd is None:
            raise ValueError("the embedded actuator needs --etcd (MESHENC_ETCD_ENDPOINTS)")
        if self.actuator is ActuatorKind.KUBERNETES and not self.encoder_statefulset:
            raise ValueError(
                "the kubernetes actuator needs --encoder-statefulset (MESHENC_ENCODER_STATEFULSET)"
            )
        if (self.autoscale_min is None) != (self.autoscale_max is None):
            raise ValueError("--autoscale-min and --autoscale-max go together")
        bounds = self.scale_bounds
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError("--autoscale-min must not exceed --autoscale-max")
        if self.autoscale_low_water >= self.autoscale_high_water:
            raise ValueError("--autoscale-low-water must be below --autoscale-high-water")
        if self.autoscale_drain_timeout <= self.autoscale_drain_grace:
            raise ValueError(
                "--autoscale-drain-timeout must be longer than --autoscale-drain-grace"
            )
        if self.degree_min > self.degree_max:
            raise ValueError("--degree-min must not exceed --degree-max")
        return self

    @property
    def layout(self) -> EtcdLayout:
        """meshenc's keys in etcd (under the default prefix without etcd)."""
        return EtcdLayout() if self.etcd is None else EtcdLayout(self.etcd.prefix)

    @property
    def scale_bounds(self) -> tuple[int, int] | None:
        """(min, max) encoders the manager may scale to; None when autoscaling is off."""
        if self.autoscale_min is None or self.autoscale_max is None:
            return None
        return self.autoscale_min, self.autoscale_max

    def autoscale_config(self) -> AutoscaleConfig | None:
        """The autoscaling policy's settings; None when autoscaling is off."""
        bounds = self.scale_bounds
        if bounds is None:
            return None
        return AutoscaleConfig(
            min_replicas=bounds[0],
            max_replicas=bounds[1],
            high_water=self.autoscale_high_water,
            low_water=self.autoscale_low_water,
            cooldown=self.autoscale_cooldown,
            drain_grace=self.autoscale_drain_grace,
            drain_timeout=self.autoscale_drain_timeout,
        )

    def core_config(self) -> ManagerConfig:
        """The planning core's settings from these flags."""
        topology = TopologyConfig.within(self.degree_min, self.degree_max)
        return ManagerConfig(
            planner=PlannerConfig(
                topology=topology, placement=PlacementConfig(redundancy=self.redundancy)
            ),
            report_timeout=self.report_timeout,
            load=LoadConfig(frame_budget=self.frame_budget),
            autoscale=self.autoscale_config(),
        )
