"""Mutual TLS for every meshenc server and channel, and who is calling.

Theory of operation: a process is given three files (:class:`TlsFiles`): the CA that signs
every meshenc certificate, its own certificate and its key. Its servers present the
certificate and require one from every client, verified against the CA
(:func:`server_credentials`); its channels present the same certificate and verify the
server's against the CA (:func:`channel_credentials`). Without the files a process runs in
plaintext, which every command asks for explicitly with ``--insecure``.

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
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

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
class TlsFiles:
    """The CA certificate, this process's certificate and its private key (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def flags(self) -> list[str]:
        """The command-line flags that start a meshenc process with these files."""
        return ["--tls-ca", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The three files' bytes (CA, certificate, key).

        Raises:
            ValueError: a file cannot be read (the message names it).
        """
        contents = []
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            try:
                contents.append(Path(path).read_bytes())
            except OSError as exc:
                raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
        return contents[0], contents[1], contents[2]


@functools.cache
def server_credentials(files: TlsFiles) -> Any:
    """Credentials of a server that presents ``files.cert`` and requires a client certificate
    signed by ``files.ca`` (read once per process)."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


@functools.cache
def channel_credentials(files: TlsFiles) -> Any:
    """Credentials of a channel that presents ``files.cert`` and trusts servers signed by
    ``files.ca`` (read once per process)."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


@functools.cache
def record_signer(files: TlsFiles) -> RecordSigner:
    """Signs this process's own registry records with its certificate's key (read once).

    Raises:
        ValueError: a file cannot be read, or the key cannot sign records (the message says
            why).
    """
    _, cert, key = files.read()
    return RecordSigner(key, cert)


@functools.cache
def record_verifier(files: TlsFiles) -> RecordVerifier:
    """Checks registry records against this process's CA (read once).

    Raises:
        ValueError: the CA file cannot be read or holds no certificate.
    """
    ca, _, _ = files.read()
    return RecordVerifier.from_pem(ca)


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
