"""Destinations and their network paths: what a ``--to`` URL means, and the delay line model.

Theory of operation: every destination has a path of its own, modelled in user space. A
datagram handed to the path at send time ``s`` (seconds on the stream's timeline) is lost with
probability ``loss``, otherwise delivered at

    due = max(s + delay + swing × sin(2π s / swing_period) + u,  previous due),
    u ~ Uniform(−jitter, +jitter)

The ``max`` keeps one destination's datagrams in order, as a real path of one hop usually does
and as an MPEG-TS receiver needs (it cannot take reordering): jitter moves deliveries, never
ahead of the datagram before. The swing is a slow wander of the delay (seconds to minutes),
the jitter a fast one. Time is an argument and randomness an injected :class:`random.Random`,
so the model is deterministic for a seed and has no IO: the sender owns the clock and sockets.

Invariants (checked by the tests): ``due >= s`` for every delivered datagram (validation asks
for ``delay >= jitter + swing``, so the model never delivers before sending); due times never
decrease; the same seed gives the same losses and delays; a URL either parses into a
:class:`Destination` or raises :class:`PathError` naming the bad part.
"""

from __future__ import annotations

import ipaddress
import math
import random
import zlib
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import parse_qsl, urlsplit

__all__ = ["DelayLine", "Destination", "PathError", "PathParams", "Scheme", "parse_destination"]

#: The longest delay a path may add: the sender holds every datagram in flight in memory.
MAX_DELAY_MS = 10_000.0


class PathError(ValueError):
    """A ``--to`` URL or one of its parameters is not valid; the message says which and why."""


class Scheme(Enum):
    """How datagrams travel: bare MPEG-TS in UDP, or behind an RTP header (RFC 2250)."""

    UDP = "udp"
    RTP = "rtp"


@dataclass(frozen=True, slots=True)
class PathParams:
    """What one destination's path does to the stream (the URL's query parameters)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    swing_ms: float = 0.0
    swing_period_s: float = 20.0
    loss: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "swing_ms", "swing_period_s", "loss"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise PathError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.delay_ms > MAX_DELAY_MS:
            raise PathError(f"delay_ms must be at most {MAX_DELAY_MS:g}, got {self.delay_ms:g}")
        if self.delay_ms < self.jitter_ms + self.swing_ms:
            raise PathError(
                f"delay_ms ({self.delay_ms:g}) must be at least jitter_ms + swing_ms "
                f"({self.jitter_ms + self.swing_ms:g}): a path cannot deliver before it sends"
            )
        if self.swing_period_s <= 0:
            raise PathError(f"swing_period_s must be > 0, got {self.swing_period_s:g}")
        if self.loss >= 1:
            raise PathError(f"loss must be a probability in [0, 1), got {self.loss:g}")


@dataclass(frozen=True, slots=True)
class Destination:
    """One ``--to`` URL: where to send and what the way there does.

    ``localaddr`` is the local IPv4 address to send from (for multicast: the interface, e.g.
    ``127.0.0.1`` for the loopback interface); ``ttl`` is the multicast time-to-live.
    """

    scheme: Scheme
    host: str
    port: int
    params: PathParams = field(default_factory=PathParams)
    localaddr: str | None = None
    ttl: int = 1

    @property
    def multicast(self) -> bool:
        """Whether ``host`` is an IPv4 multicast group (a name is never one)."""
        try:
            return ipaddress.IPv4Address(self.host).is_multicast
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{self.scheme.value}://{self.host}:{self.port}"


#: The query parameters a URL may carry, each with its reader (see docs/source.md).
_FLOAT_KEYS = ("delay_ms", "jitter_ms", "swing_ms", "swing_period_s", "loss")
_INT_KEYS = ("seed", "ttl")
_KNOWN_KEYS = (*_FLOAT_KEYS, *_INT_KEYS, "localaddr")


def parse_destination(url: str) -> Destination:
    """Read ``udp://HOST:PORT?delay_ms=40&jitter_ms=5`` (or ``rtp://...``) into a destination.

    The seed defaults to a checksum of ``HOST:PORT``, so two destinations never share a loss
    pattern by accident and a run is repeatable without naming seeds.

    Raises:
        PathError: the scheme, host, port or a parameter is missing, malformed, repeated,
            unknown or out of range.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise PathError(f"{url!r}: {exc}") from None
    try:
        scheme = Scheme(parts.scheme.lower())
    except ValueError:
        raise PathError(
            f"{url!r}: scheme must be udp:// or rtp://, got {parts.scheme or 'none'!r}"
        ) from None
    host = parts.hostname
    if not host:
        raise PathError(f"{url!r}: no host; expected {scheme.value}://HOST:PORT")
    if port is None or port == 0:
        raise PathError(f"{url!r}: no port; expected {scheme.value}://HOST:PORT (1-65535)")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise PathError(f"{url!r}: expected {scheme.value}://HOST:PORT?KEY=VALUE&..., nothing else")
    values: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in _KNOWN_KEYS:
            raise PathError(f"{url!r}: unknown parameter {key!r}; known: {', '.join(_KNOWN_KEYS)}")
        if key in values:
            raise PathError(f"{url!r}: parameter {key!r} given twice")
        values[key] = value
    numbers: dict[str, float] = {}
    for key in _FLOAT_KEYS:
        if key in values:
            numbers[key] = _number(url, key, values[key])
    seed = _integer(url, "seed", values["seed"]) if "seed" in values else None
    ttl = _integer(url, "ttl", values["ttl"]) if "ttl" in values else 1
    if not 1 <= ttl <= 255:
        raise PathError(f"{url!r}: ttl must be in 1..255, got {ttl}")
    localaddr = values.get("localaddr")
    if localaddr is not None:
        try:
            ipaddress.IPv4Address(localaddr)
        except ValueError:
            raise PathError(
                f"{url!r}: localaddr must be an IPv4 address, got {localaddr!r}"
            ) from None
    if seed is None:
        seed = zlib.crc32(f"{host}:{port}".encode())
    try:
        params = PathParams(seed=seed, **numbers)
    except PathError as exc:
        raise PathError(f"{url!r}: {exc}") from None
    return Destination(scheme, host, port, params, localaddr=localaddr, ttl=ttl)


def _number(url: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PathError(f"{url!r}: {key} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise PathError(f"{url!r}: {key} must be a finite number, got {text!r}")
    return value


def _integer(url: str, key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PathError(f"{url!r}: {key} must be an integer, got {text!r}") from None


class DelayLine:
    """One destination's path: decides, datagram by datagram, whether and when it arrives.

    Call :meth:`due` once per datagram, in sending order, with non-decreasing send times.
    """

    def __init__(self, params: PathParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._last_due = -math.inf

    def base_delay(self, sent: float) -> float:
        """The delay (s) before jitter at send time ``sent``: the mean plus the swing."""
        p = self.params
        swing = p.swing_ms * math.sin(2 * math.pi * sent / p.swing_period_s)
        return (p.delay_ms + swing) / 1000

    def due(self, sent: float) -> float | None:
        """When a datagram sent at ``sent`` (s) is delivered, or None when the path loses it.

        The loss draw comes first and a lost datagram draws nothing else, so a path's losses
        depend only on its seed and the number of datagrams, not on its delays.
        """
        p = self.params
        if p.loss and self._rng.random() < p.loss:
            return None
        jitter = self._rng.uniform(-p.jitter_ms, p.jitter_ms) / 1000 if p.jitter_ms else 0.0
        due = max(sent + self.base_delay(sent) + jitter, self._last_due)
        self._last_due = due
        return due
