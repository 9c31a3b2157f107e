"""Mutual TLS for every meshenc server and channel, and who is calling.

Theory of operation: a process is given three files (:class:`TlsFiles`): the CA that signs
every meshenc certificate, its own certificate and its key. Its servers present the
certificate and require one from every client, verified against the CA
(:func:`server_credentials`); its channels present the same certificate and verify the
server's against the CA (:func:`channel_credentials`). Without the files a process runs in
plaintext, which every command asks for explicitly with ``--insecure``.

Renewal: the files are read again when they change (their modification time, size or inode),
by a server before each new connection's handshake and by a channel when it is made, so a
renewed certificate is used by every connection made after it was written, without a
restart. Contents that do not read back as a matching pair (a renewal caught half-written)
are not taken: the previous ones stay in force, with one log line.

An identity is the URI ``meshenc://<name>`` in a certificate's subject alternative names
(``services.common.certs`` writes it, with the DNS name ``<name>``): an encoder's name is its
encoder id; :data:`OPERATOR`, :data:`MANAGER` and :data:`REGISTRY` are the names of the
operator (the command line, grpcurl), the manager and every registry node. :func:`peer_identity`
reads it from a call's ``context.auth_context()``. The same certificate and key sign the
process's registry records (:func:`record_signer`), and the same CA checks others' records
(:func:`record_verifier`; :mod:`meshenc.wire.signature`).

Invariant: on a TLS server every call reaching a servicer has an identity (the
:class:`IdentityRequired` interceptor ends any other with UNAUTHENTICATED), so a servicer that
finds none knows the server runs in plaintext. The checks (:func:`require_identity`,
:func:`require_operator`, :func:`require_role`) therefore let a call without an identity
through: ``--insecure`` is the absence of every check, not a weaker one.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshenc.wire.signature import IDENTITY_RE, IDENTITY_SCHEME, RecordSigner, RecordVerifier
from meshenc.wire.validation import MAX_ID_LENGTH
from services.common.call_guard import guard
from services.common.log_limit import LimitedLog

__all__ = [
    "IDENTITY_SCHEME",
    "MANAGER",
    "OPERATOR",
    "REGISTRY",
    "IdentityRequired",
    "TlsFiles",
    "TlsMaterial",
    "channel_credentials",
    "check_identity",
    "identity_uri",
    "peer_identity",
    "record_signer",
    "record_verifier",
    "refuse",
    "require_identity",
    "require_operator",
    "require_role",
    "server_credentials",
]

log = logging.getLogger("meshenc.tls")

OPERATOR: Final = "operator"
"""The operator's identity: the only one that may change the mesh (``SetParameters``)."""
MANAGER: Final = "manager"
"""The manager's identity."""
REGISTRY: Final = "registry"
"""The identity every registry node presents: the only one that may replicate records."""
_refusals: Final = LimitedLog(log)


def check_identity(name: str) -> str:
    """``name`` when it can be an identity (an encoder id's characters), else ValueError."""
    if IDENTITY_RE.fullmatch(name) is None:
        raise ValueError(
            f"an identity is 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9._-], got {name!r}"
        )
    return name


def identity_uri(name: str) -> str:
    """The subject alternative name (URI) that names ``name`` in its certificate."""
    return IDENTITY_SCHEME + check_identity(name)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The contents of a :class:`TlsFiles`, checked to belong together (PEM bytes)."""

    ca: bytes
    cert: bytes
    key: bytes


_FileStamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA certificate, this process's certificate and its private key (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def flags(self) -> list[str]:
        """The command-line flags that start a meshenc process with these files."""
        return ["--tls-ca", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def _named(self) -> tuple[tuple[str, Path], ...]:
        return (("CA", self.ca), ("certificate", self.cert), ("key", self.key))

    def stamp(self) -> tuple[_FileStamp, ...]:
        """What changes when a file is rewritten or replaced: each file's modification time,
        size and inode (a missing file stamps as ``(-1, -1, -1)``)."""
        stamps = []
        for _, path in self._named():
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((-1, -1, -1))
            else:
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def read(self) -> TlsMaterial:
        """The three files' contents, checked: the CA and the certificate parse and the key is
        the certificate's.

        Raises:
            ValueError: a file cannot be read or parsed, or the key is not the certificate's
                (a pair caught half-written); the message names the file.
        """
        contents = []
        for what, path in self._named():
            try:
                contents.append(Path(path).read_bytes())
            except OSError as exc:
                raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
        material = TlsMaterial(ca=contents[0], cert=contents[1], key=contents[2])
        _check(material, self)
        return material


def _check(material: TlsMaterial, files: TlsFiles) -> None:
    """ValueError unless ``material`` parses and its key belongs to its certificate."""
    try:
        x509.load_pem_x509_certificates(material.ca)
    except ValueError:
        raise ValueError(f"the TLS CA {files.ca} holds no PEM certificate") from None
    try:
        leaf = x509.load_pem_x509_certificates(material.cert)[0]
    except ValueError:
        raise ValueError(f"the TLS certificate {files.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(material.key, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"the TLS key {files.key} holds no unencrypted PEM key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError(f"the TLS key {files.key} is not the key of {files.cert}")


class _Reloader:
    """The latest good contents of one :class:`TlsFiles`, re-read when a file changes.

    ``generation`` counts the contents taken since start. A change that does not read back as
    a matching pair (caught half-written, a missing file) keeps the previous contents, with
    one log line per change seen. Called from gRPC's own threads too, hence the lock.
    """

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self.material = files.read()
        self.generation = 0

    def current(self) -> tuple[int, TlsMaterial]:
        """The generation and contents in force, after reading the files if they changed."""
        with self._lock:
            stamp = self._files.stamp()
            if stamp != self._stamp:
                # Stamped before reading: a file changing meanwhile is read again next time.
                self._stamp = stamp
                try:
                    material = self._files.read()
                except ValueError as exc:
                    log.warning("kept the previous TLS certificate: %s", exc)
                else:
                    if material != self.material:
                        self.material = material
                        self.generation += 1
                        log.info("took the renewed TLS certificate %s", self._files.cert)
            return self.generation, self.material


@functools.cache
def _reloader(files: TlsFiles) -> _Reloader:
    return _Reloader(files)


def _server_configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.ca
    )


def server_credentials(files: TlsFiles) -> Any:
    """Credentials of a server that presents ``files.cert`` and requires a client certificate
    signed by ``files.ca``.

    gRPC asks for the certificate before every new connection's handshake; the files are
    read again when they changed (:meth:`TlsFiles.stamp`), so a renewed certificate is served
    without a restart, while connections already open keep theirs.

    Raises:
        ValueError: the files cannot be read or do not belong together (at start only).
    """
    reloader = _reloader(files)
    applied, material = reloader.current()

    def fetch() -> Any:
        nonlocal applied
        try:
            generation, renewed = reloader.current()
        except Exception:  # an exception here would fail the handshake; keep serving
            log.exception("could not check the TLS files for a renewal")
            return None
        if generation == applied:
            return None
        applied = generation
        return _server_configuration(renewed)

    return grpc.dynamic_ssl_server_credentials(
        _server_configuration(material), fetch, require_client_authentication=True
    )


_channel_credentials: dict[TlsFiles, tuple[int, Any]] = {}


def channel_credentials(files: TlsFiles) -> Any:
    """Credentials of a channel that presents ``files.cert`` and trusts servers signed by
    ``files.ca``, as the files are now.

    The same object while the files are unchanged, a new one after a renewal: a caller that
    keeps a channel compares it to tell that its channel should be opened again.

    Raises:
        ValueError: the files cannot be read or do not belong together (the first time only).
    """
    generation, material = _reloader(files).current()
    cached = _channel_credentials.get(files)
    if cached is None or cached[0] != generation:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca,
            private_key=material.key,
            certificate_chain=material.cert,
        )
        cached = _channel_credentials[files] = (generation, credentials)
    return cached[1]


def record_signer(files: TlsFiles) -> RecordSigner:
    """Signs this process's own registry records with its certificate's key, as the files
    are now (read again when they change; a pair caught half-written keeps the previous).

    Raises:
        ValueError: a file cannot be read, or the key cannot sign records (the message says
            why), and there is no previous signer to keep.
    """
    return _current(_signers, files, lambda m: RecordSigner(m.key, m.cert))


def record_verifier(files: TlsFiles) -> RecordVerifier:
    """Checks registry records against this process's CA, as the files are now (see
    :func:`record_signer`).

    Raises:
        ValueError: the CA file cannot be read or holds no certificate, and there is no
            previous verifier to keep.
    """
    return _current(_verifiers, files, lambda m: RecordVerifier.from_pem(m.ca))


_Made = TypeVar("_Made")
_signers: dict[TlsFiles, tuple[tuple[_FileStamp, ...], RecordSigner]] = {}
_verifiers: dict[TlsFiles, tuple[tuple[_FileStamp, ...], RecordVerifier]] = {}


def _current(
    made: dict[TlsFiles, tuple[tuple[_FileStamp, ...], _Made]],
    files: TlsFiles,
    make: Callable[[TlsMaterial], _Made],
) -> _Made:
    """``make`` of the files' contents, made again only when a file changed."""
    stamp = files.stamp()
    held = made.get(files)
    if held is not None and held[0] == stamp:
        return held[1]
    try:
        fresh = make(files.read())
    except ValueError:
        if held is None:
            raise
        return held[1]
    made[files] = (stamp, fresh)
    return fresh


def peer_identity(context: Any) -> str | None:
    """The caller's identity (``meshenc://NAME`` in its certificate), or None on a plaintext
    connection or for a certificate that names none."""
    for value in context.auth_context().get("peer_uri", ()):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text.startswith(IDENTITY_SCHEME):
            name = text[len(IDENTITY_SCHEME) :]
            if IDENTITY_RE.fullmatch(name) is not None:
                return name
    return None


async def refuse(context: Any, code: grpc.StatusCode, kind: str, message: str) -> None:
    """End the call with ``code`` and ``message``; one log line per ``kind`` every 10 s."""
    _refusals.warning(kind, "refused a call from %s: %s", context.peer(), message)
    await context.abort(code, message)


async def require_identity(context: Any, expected: str, what: str) -> None:
    """PERMISSION_DENIED unless the caller is ``expected`` (or the server runs in plaintext).

    ``what`` names the claim in the refusal, e.g. ``"hello.sender_id"``.
    """
    caller = peer_identity(context)
    if caller is not None and caller != expected:
        await refuse(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{what}:{caller}",
            f"{what} is {expected!r} but the caller's certificate is {caller!r}",
        )


async def require_role(context: Any, allowed: Collection[str], what: str) -> None:
    """PERMISSION_DENIED unless the caller is one of ``allowed`` (or the server runs in
    plaintext); ``what`` says what is being done, e.g. ``"SetParameters"``."""
    caller = peer_identity(context)
    if caller is not None and caller not in allowed:
        names = " or ".join(repr(a) for a in sorted(allowed))
        await refuse(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{what}:{caller}",
            f"{what} is for {names}, not {caller!r}",
        )


async def require_operator(context: Any, what: str) -> None:
    """PERMISSION_DENIED unless the caller is the operator (or the server runs in plaintext)."""
    await require_role(context, (OPERATOR,), what)


class IdentityRequired(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends every call whose peer has no identity with UNAUTHENTICATED, on TLS servers.

    TLS with required client certificates already refuses a client without a certificate
    signed by the CA; this catches a certificate of that CA which names no identity.
    """

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        async def check(context: Any) -> None:
            if peer_identity(context) is None:
                await refuse(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no-identity",
                    f"{method}: the client certificate names no {IDENTITY_SCHEME} identity",
                )

        return guard(handler, before=check)
