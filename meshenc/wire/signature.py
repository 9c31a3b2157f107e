"""Registry records signed by their owners: what is signed, how it is signed, how it is checked.

Theory of operation
-------------------
Under mutual TLS every encoder holds a certificate that names it (``meshenc://<encoder id>`` as
a subject alternative name) and the private key behind it. It signs its own ``EncoderRecord``
with that key (:class:`RecordSigner`) and puts the signature and its certificate (DER) in the
record. Anyone who trusts the same CA can then check the record without asking the owner
(:class:`RecordVerifier`): the certificate was issued by the CA, is valid now, names the
record's ``encoder_id``, and its key made the signature over the record's fields. A registry
node (or whoever holds the ``registry`` certificate) can drop or replay an owner's record, but
cannot make one up or change one: the owner's key never leaves the owner.

What is signed is :func:`signed_bytes`: every field but ``ttl_ms`` (a node rewrites it to the
remaining ttl when it answers or republishes) and the two signature fields themselves.

Keys: ECDSA (``meshenc certs`` makes P-256) or RSA (PKCS#1 v1.5), both over SHA-256; another
key type is refused when the signer is made, so an encoder with such a key fails at start
rather than publishing records nobody accepts.

Pure: bytes and certificates in, a verdict out; the time a certificate must be valid at is an
argument. The services read the files and the clock.
"""

from __future__ import annotations

import datetime
import re
import struct
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from meshenc.v1 import registry_pb2
from meshenc.wire.validation import MAX_ID_LENGTH

__all__ = [
    "IDENTITY_RE",
    "IDENTITY_SCHEME",
    "SIGNATURE_DOMAIN",
    "ForgedRecord",
    "RecordSigner",
    "RecordVerifier",
    "certificate_identity",
    "signed_bytes",
]

IDENTITY_SCHEME: Final = "meshenc://"
"""How a certificate names a meshenc identity: the URI ``meshenc://<name>``."""
SIGNATURE_DOMAIN: Final = b"meshenc.v1.EncoderRecord signature\x00"
"""Leads the signed bytes, so that a record signature can never pass for the signature of
anything else the same key signs (TLS handshakes, a later message format)."""
IDENTITY_RE: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID_LENGTH}}}")
"""What an identity may be: an encoder id's characters and length."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class ForgedRecord(Exception):  # noqa: N818 -- reads as what was found
    """A record its owner did not sign, or that cannot be shown to be signed by it."""


def signed_bytes(record: registry_pb2.EncoderRecord) -> bytes:
    """The bytes an owner signs for ``record``.

    An explicit encoding rather than the protobuf serialisation: protobuf's deterministic mode
    is stable for one library build only (its documentation says it is not canonical across
    languages or versions) and would carry unknown fields; these bytes are the same wherever
    they are computed, and they say exactly which fields the signature covers. Strings are
    UTF-8 with a 4-byte length in front (so no two records encode alike), numbers fixed-width
    big-endian. ``ttl_ms`` is left out because nodes rewrite it.
    """
    parts = [SIGNATURE_DOMAIN]
    for text in (record.encoder_id, record.address, record.segment_id):
        data = text.encode("utf-8")
        parts.append(struct.pack(">I", len(data)))
        parts.append(data)
    parts.append(struct.pack(">IiQ", record.capacity, record.health, record.version))
    return b"".join(parts)


#: What cryptography raises, besides ValueError, on a certificate that is well-formed DER but
#: not a certificate it can read (found by the fuzz test: a version field of 7 raised
#: InvalidVersion out of the registry's Store, a traceback and UNKNOWN).
_UNREADABLE: Final = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def certificate_identity(cert: x509.Certificate) -> str | None:
    """The identity a certificate names (its first ``meshenc://NAME`` URI with a valid
    name), or None."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, *_UNREADABLE):
        return None
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(IDENTITY_SCHEME):
            name = uri[len(IDENTITY_SCHEME) :]
            if IDENTITY_RE.fullmatch(name) is not None:
                return name
    return None


def _public_bytes(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class RecordSigner:
    """Signs an encoder's own records with the key of its TLS certificate.

    Args:
        key_pem: the private key (PEM, unencrypted), ECDSA or RSA.
        cert_pem: its certificate (PEM; the first one when the file holds a chain).

    Raises:
        ValueError: the key is not ECDSA or RSA, a file does not parse, the certificate is not
            the key's, or it names no ``meshenc://`` identity.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"the private key does not load: {exc}") from None
        if not isinstance(key, PrivateKey):
            raise ValueError(
                f"records are signed with ECDSA or RSA keys, not {type(key).__name__} "
                "(meshenc certs makes ECDSA P-256)"
            )
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
            _public_bytes(public) != _public_bytes(key.public_key())
        ):
            raise ValueError("the certificate is not the private key's")
        identity = certificate_identity(cert)
        if identity is None:
            raise ValueError(f"the certificate names no {IDENTITY_SCHEME} identity")
        self._key: PrivateKey = key
        self._certificate = cert.public_bytes(serialization.Encoding.DER)
        self.identity: Final = identity
        """The identity the certificate names: the only ``encoder_id`` it can sign for."""

    def sign(self, record: registry_pb2.EncoderRecord) -> None:
        """Set ``record``'s certificate and signature over its current fields (in place)."""
        data = signed_bytes(record)
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        record.certificate = self._certificate
        record.signature = signature


@dataclass(frozen=True, slots=True)
class RecordVerifier:
    """Decides whether a record was signed by its owner, for the CA(s) a process trusts.

    A certificate must be issued directly by one of ``authorities`` (meshenc's CA signs every
    identity itself; a deployment whose identities come from an intermediate lists it in the
    CA file).
    """

    authorities: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, ca_pem: bytes) -> RecordVerifier:
        """From a CA file's bytes (one or more PEM certificates).

        Raises:
            ValueError: the bytes hold no PEM certificate.
        """
        return cls(tuple(x509.load_pem_x509_certificates(ca_pem)))

    def check(self, record: registry_pb2.EncoderRecord, now: datetime.datetime) -> None:
        """Return if ``record`` (already validated) is signed by its owner, as of ``now``.

        Raises:
            ForgedRecord: it is not; the message names the field and the reason.
        """
        if not record.signature or not record.certificate:
            raise ForgedRecord("record.signature: the record is not signed")
        try:
            cert = x509.load_der_x509_certificate(record.certificate)
            valid_from, valid_to = cert.not_valid_before_utc, cert.not_valid_after_utc
        except _UNREADABLE:
            raise ForgedRecord("record.certificate: not a readable X.509 certificate") from None
        if not any(_issued_by(cert, authority) for authority in self.authorities):
            raise ForgedRecord("record.certificate: not issued by the CA this process trusts")
        if not valid_from <= now <= valid_to:
            raise ForgedRecord(
                f"record.certificate: valid from {valid_from:%Y-%m-%dT%H:%M:%SZ} "
                f"to {valid_to:%Y-%m-%dT%H:%M:%SZ}, not now"
            )
        name = certificate_identity(cert)
        if name != record.encoder_id:
            raise ForgedRecord(
                f"record.certificate: names {name!r}, not the record's owner {record.encoder_id!r}"
            )
        try:
            public = cert.public_key()
            data = signed_bytes(record)
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(record.signature, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(record.signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                raise ForgedRecord("record.certificate: its key is neither ECDSA nor RSA")
        except (InvalidSignature, *_UNREADABLE):
            raise ForgedRecord(
                "record.signature: does not match the record (a field changed after signing, "
                "or another key signed it)"
            ) from None


def _issued_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    """Whether ``authority`` issued ``cert`` (names match and its key made the signature)."""
    try:
        cert.verify_directly_issued_by(authority)
    except (InvalidSignature, *_UNREADABLE):
        return False
    return True
