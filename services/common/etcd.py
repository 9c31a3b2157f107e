"""How a meshenc service reaches etcd: one validated setting, one client, for every service.

Theory of operation
-------------------
:class:`EtcdSettings` describes an etcd connection once — endpoints, key prefix, TLS files,
credentials and the lease TTL — and the encoder and the manager fill it from the same flags
(``--etcd``, ``--etcd-prefix``, ``--etcd-ca/-cert/-key``, ``--etcd-user/-password``).

:func:`connect_client` turns it into an aetcd client. aetcd 1.0 dials one host in plain text;
:class:`EtcdClient` adds the two things it lacks:

- **TLS**: it builds the secure channel itself (with client certificates when given);
  everything else is aetcd's.
- **Several endpoints**: it dials one endpoint at a time. Before each request it asks gRPC how
  that channel is; when gRPC reports it in ``TRANSIENT_FAILURE`` (the endpoint refuses or
  cannot be reached), the client drops it and dials the next endpoint, in turn. Every caller
  already retries a failed etcd request with backoff (tenacity), so the retry after a lost
  endpoint goes to the next one; watches on the dropped channel end, and their owners watch
  again from the last revision they saw, as after any broken watch.

Invariants:

1. A client holds at most one channel; a dropped one is closed in the background.
2. A client made for one endpoint (``connect_client(settings, endpoint)``) never moves: the
   encoder's segment election opens one client per session and chooses the endpoint itself.
3. An endpoint that accepts connections but never answers is not left by the client (gRPC
   does not report it as failed); requests time out and the callers' retries keep trying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Self

import aetcd  # type: ignore[import-untyped]
import grpc
from aetcd import rpc as etcd_rpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshenc.wire.address import parse_address
from meshenc.wire.adjacency import EtcdLayout
from services.common.grpc_server import CHANNEL_OPTIONS

__all__ = [
    "DEFAULT_ETCD_PREFIX",
    "DEFAULT_LEASE_TTL",
    "REQUEST_TIMEOUT",
    "EtcdClient",
    "EtcdSettings",
    "RevisionCursor",
    "connect_client",
    "parse_endpoints",
    "watch_from_revision",
]

log = logging.getLogger("meshenc.etcd")

DEFAULT_ETCD_PREFIX: Final = "/meshenc"
"""Where meshenc keeps its keys in etcd (docs/leadership.md and docs/actuators.md)."""
DEFAULT_LEASE_TTL: Final = 5
"""Seconds a lease outlives its holder's last keep-alive (a crashed holder's keys linger
this long when nothing faster notices)."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a client's close may take: aetcd waits for its watch stream's end, which after etcd
went away and came back may never come (a stopping encoder hung there past the 10 s its
launcher gives it after SIGTERM)."""
REQUEST_TIMEOUT: Final = 2.0
"""Seconds an etcd request may take before it counts as failed."""


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``"http://10.0.0.5:2379,http://10.0.0.6:2379"`` → a tuple of endpoints (may be empty).

    Raises:
        ValueError: naming the first endpoint that is not ``http(s)://HOST:PORT``.
    """
    endpoints = tuple(filter(None, (part.strip() for part in text.split(","))))
    for endpoint in endpoints:
        scheme, sep, target = endpoint.partition("://")
        try:
            if scheme not in ("http", "https") or not sep:
                raise ValueError
            parse_address(target.removesuffix("/"))
        except ValueError:
            raise ValueError(f"etcd endpoint {endpoint!r} must be http(s)://HOST:PORT") from None
    return endpoints


def _target(endpoint: str) -> str:
    """``http://[::1]:2379/`` → ``[::1]:2379``, the gRPC target of a parsed endpoint."""
    return endpoint.split("://", 1)[1].rstrip("/")


class EtcdSettings(BaseModel):
    """How a service reaches etcd (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[str, ...] = Field(min_length=1)
    prefix: str = DEFAULT_ETCD_PREFIX
    #: TLS: the CA that signed etcd's certificate, and this client's certificate and key.
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = None
    lease_ttl: Annotated[int, Field(ge=1, le=3600)] = DEFAULT_LEASE_TTL

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return parse_endpoints(",".join(value))

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        EtcdLayout(value)  # the one rule for prefixes (ValueError naming it)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--etcd-cert and --etcd-key go together")
        if (self.user is None) != (self.password is None):
            raise ValueError("--etcd-user and --etcd-password go together")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"etcd {name} file {str(path)!r} does not exist")
        return self

    @property
    def tls(self) -> bool:
        """Whether to dial etcd over TLS (an https endpoint or any TLS file given)."""
        return any(e.startswith("https://") for e in self.endpoints) or any(
            p is not None for p in (self.ca, self.cert, self.key)
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials for TLS (None: plain text). Reads the files."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over TLS when given credentials, moving on to the next endpoint when
    gRPC reports the current one unreachable (see the module docstring).

    Args:
        endpoints: ``http(s)://HOST:PORT`` endpoints, dialled in this order.
        credentials: TLS channel credentials; None dials in plain text.
        kwargs: aetcd's (``username``, ``password``, ``timeout``, ``options``).
    """

    _is_connecting: bool  # aetcd's: a request is dialling now

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        **kwargs: Any,
    ) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self._targets = tuple(_target(e) for e in endpoints)
        host, port = parse_address(self._targets[0])
        super().__init__(host, port, **kwargs)
        self._credentials = credentials
        self._index = 0
        self._retiring: set[asyncio.Task[None]] = set()
        #: Times the client left an unreachable endpoint for the next one.
        self.failovers = 0

    @property
    def target(self) -> str:
        """The endpoint dialled now (``HOST:PORT``)."""
        return self._targets[self._index]

    def _unreachable(self) -> bool:
        channel = self.channel
        return (
            channel is not None
            and channel.get_state(try_to_connect=False)
            is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        )

    def _move_on(self) -> None:
        """Drop the current channel (closed in the background) and take the next endpoint.

        Synchronous on purpose: no other request can run between the drop and the dial.
        """
        channel, watcher = self.channel, self._watcher
        left = self.target
        self._init_channel_attrs()
        self._connected.clear()
        self._index = (self._index + 1) % len(self._targets)
        self.failovers += 1
        log.warning("etcd at %s is unreachable; trying %s", left, self.target)
        task = asyncio.get_running_loop().create_task(self._retire(channel, watcher))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(channel: Any, watcher: Any) -> None:
        with contextlib.suppress(Exception):
            if watcher is not None:
                await asyncio.wait_for(watcher.shutdown(), 1.0)
        with contextlib.suppress(Exception):
            await channel.close()

    async def connect(self) -> None:
        """Dial the current endpoint (the next one when gRPC says this one failed)."""
        if self._connected.is_set() and len(self._targets) > 1 and self._unreachable():
            self._move_on()
        if self._connected.is_set():
            return
        if self._is_connecting:  # another request is dialling: wait for it, as aetcd does
            # asyncio.timeout, not wait_for: see services.common.waiting.
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        self._is_connecting = True
        try:
            options = list(self._options.items())
            if self._credentials is None:
                self.channel = etcd_rpc.insecure_channel(self.target, options=options)
            else:
                self.channel = etcd_rpc.secure_channel(
                    self.target, self._credentials, options=options
                )
            if self._username is not None:
                self.auth_stub = etcd_rpc.AuthStub(self.channel)
                answer = await self.auth_stub.Authenticate(
                    etcd_rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                self.metadata = (("token", answer.token),)
            self.kvstub = etcd_rpc.KVStub(self.channel)
            self.clusterstub = etcd_rpc.ClusterStub(self.channel)
            self.leasestub = etcd_rpc.LeaseStub(self.channel)
            self.maintenancestub = etcd_rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                etcd_rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False

    async def close(self) -> None:
        """Close the channel, and any dropped one still closing, within ``CLOSE_TIMEOUT``:
        a close that takes longer is cancelled with one warning, and the client is left
        unconnected (what is not closed is the process's to free as it ends)."""
        try:
            await asyncio.wait_for(super().close(), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("closing the etcd client took over %g s: left behind", CLOSE_TIMEOUT)
            self._init_channel_attrs()
            self._connected.clear()
        await asyncio.gather(*self._retiring, return_exceptions=True)


def connect_client(
    settings: EtcdSettings, endpoint: str | None = None, *, timeout: float = REQUEST_TIMEOUT
) -> EtcdClient:
    """An (unconnected) client with the settings' TLS and credentials; it connects on first
    use. With ``endpoint`` it stays on that one; without, it uses them all in turn."""
    return EtcdClient(
        (endpoint,) if endpoint is not None else settings.endpoints,
        credentials=settings.credentials(),
        username=settings.user,
        password=settings.password,
        timeout=timeout,
        options=dict(CHANNEL_OPTIONS),
    )


@dataclass(slots=True)
class RevisionCursor:
    """Where the next watch starts: the last revision seen, or None when the caller has to
    read again (the revision was compacted)."""

    revision: int | None = None


async def watch_from_revision(
    open_watch: Callable[[int], Awaitable[Any]],
    *,
    cursor: RevisionCursor,
    on_event: Callable[[Any], None],
    what: str,
    renew_after: float,
) -> None:
    """One watch, opened by ``open_watch(start_revision)`` just after ``cursor``, for
    ``renew_after`` seconds at most; then the caller watches again from the cursor.

    The cursor moves to each event's revision before ``on_event`` sees the event. A compacted
    revision clears the cursor and returns: the caller reads again. Other errors are raised
    (the caller resumes from the cursor). The watch is cancelled on the way out.
    """
    assert cursor.revision is not None, "read before watching"
    try:
        watch = await open_watch(cursor.revision + 1)
    except aetcd.exceptions.RevisionCompactedError:
        log.info("%s: revision %d was compacted; reading again", what, cursor.revision)
        cursor.revision = None
        return
    renewal = asyncio.timeout(renew_after)
    try:
        async with renewal:
            async for event in watch:
                cursor.revision = int(event.kv.mod_revision)
                on_event(event)
    except TimeoutError:
        if not renewal.expired():
            raise
    except aetcd.exceptions.RevisionCompactedError:
        cursor.revision = None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watch.cancel(), 1.0)
