"""A development certificate authority: one CA and a certificate and key per identity.

``meshenc certs`` and ``meshenc up`` call :func:`make_certificates`; tests use it to get real
certificates. Each certificate names its identity as the URI ``meshenc://<name>`` (what
``services.common.tls.peer_identity`` reads back), as a DNS name ``<name>`` (so a client that
knows whom it dials can check the server's name, ``grpc.ssl_target_name_override``), and is
valid for ``localhost``, ``127.0.0.1`` and ``::1`` so that local servers can present it. Every
certificate is good for both ends of a connection (serverAuth and clientAuth); the operator's
is simply never served.

Keys are ECDSA P-256; the CA's key stays in the folder (``ca.key``, mode 0600) so that more
identities can be added to the same CA later. Not for production: a real deployment's CA is
cert-manager or the organisation's own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshenc.wire.signature import certificate_identity as identity_of
from services.common.tls import TlsFiles, check_identity, identity_uri

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_VALID_DAYS",
    "CertificateSet",
    "certificate_identity",
    "make_certificates",
]

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
DEFAULT_VALID_DAYS: Final = 30
"""How long development certificates live: long enough for any local run, short enough that a
leaked one expires."""
_LOCAL_NAMES: Final[tuple[x509.GeneralName, ...]] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """Where :func:`make_certificates` wrote the CA and each identity's files."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / CA_CERT

    def files(self, name: str) -> TlsFiles:
        """The CA, certificate and key an identity's process is started with."""
        return TlsFiles(
            ca=self.ca, cert=self.folder / f"{name}.crt", key=self.folder / f"{name}.key"
        )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when it replaces a key made with another mode
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_or_make_ca(
    folder: Path, now: datetime.datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC key made by meshenc certs")
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshenc development CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _identity_cert(
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int,
) -> x509.Certificate:
    names = [x509.UniformResourceIdentifier(identity_uri(name)), x509.DNSName(name)]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([*names, *_LOCAL_NAMES]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def make_certificates(
    folder: Path, names: Iterable[str], *, days: int = DEFAULT_VALID_DAYS
) -> CertificateSet:
    """Write a CA (unless ``folder`` holds one already) and ``<name>.crt``/``<name>.key`` for
    each name, signed by it; existing identity files are replaced.

    Raises:
        ValueError: a name is not a valid identity, or the folder's CA key is not one of ours.
    """
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        check_identity(name)
    if days < 1:
        raise ValueError("certificates must be valid for at least one day")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_cert, ca_key = _load_or_make_ca(folder, now, days)
    for name in wanted:
        key = _key()
        _write_key(folder / f"{name}.key", key)
        _write_cert(folder / f"{name}.crt", _identity_cert(name, ca_cert, ca_key, key, now, days))
    return CertificateSet(folder)


def certificate_identity(path: Path) -> str | None:
    """The identity (``meshenc://NAME``) a PEM certificate file names, or None.

    Raises:
        ValueError: the file cannot be read or is not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the certificate {path}: {exc.strerror}") from None
    return identity_of(cert)
