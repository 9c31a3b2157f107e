"""Record signatures (``meshenc.wire.signature``) with real certificates from ``meshenc certs``'
code (``services.common.certs``); the RSA ones are issued in the test by that same CA's key."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from meshenc.v1 import registry_pb2
from meshenc.wire import validation
from meshenc.wire.signature import ForgedRecord, RecordSigner, RecordVerifier, signed_bytes
from services.common.certs import CA_KEY, CertificateSet, make_certificates


def now() -> datetime.datetime:
    """The time of the check: certificates are made as the tests run (a module-wide constant
    went stale under a long suite, before the certificates' start)."""
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"), ["e1", "e2"])


def signer(certs: CertificateSet, name: str) -> RecordSigner:
    files = certs.files(name)
    return RecordSigner(files.key.read_bytes(), files.cert.read_bytes())


def verifier(certs: CertificateSet) -> RecordVerifier:
    return RecordVerifier.from_pem(certs.ca.read_bytes())


def record(**fields: Any) -> registry_pb2.EncoderRecord:
    values: dict[str, Any] = {
        "encoder_id": "e1",
        "address": "10.1.2.3:7400",
        "segment_id": "seg-1",
        "capacity": 4,
        "health": registry_pb2.ENCODER_HEALTH_HEALTHY,
        "version": 1_700_000_000_000_000,
        "ttl_ms": 30_000,
    }
    values.update(fields)
    return registry_pb2.EncoderRecord(**values)


def signed_by(certs: CertificateSet, name: str, **fields: object) -> registry_pb2.EncoderRecord:
    message = record(**fields)
    signer(certs, name).sign(message)
    return message


def test_an_owners_record_verifies_and_a_replicas_ttl_rewrite_keeps_it_valid(
    certs: CertificateSet,
) -> None:
    message = signed_by(certs, "e1")
    assert 0 < len(message.signature) <= 72 and message.certificate
    validation.validate_encoder_record(message)
    verifier(certs).check(message, now())
    message.ttl_ms = 1  # what FindValue answers: the remaining ttl
    verifier(certs).check(message, now())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "10.6.6.6:7400"),
        ("segment_id", "seg-2"),
        ("capacity", 5),
        ("health", registry_pb2.ENCODER_HEALTH_UNHEALTHY),
        ("version", 1_700_000_000_000_001),
    ],
)
def test_every_signed_field_changed_after_signing_is_caught(
    certs: CertificateSet, field: str, value: object
) -> None:
    message = signed_by(certs, "e1")
    setattr(message, field, value)
    with pytest.raises(ForgedRecord, match=r"record\.signature: does not match"):
        verifier(certs).check(message, now())


def test_records_not_signed_by_their_owner_are_forged(
    certs: CertificateSet, tmp_path: Path
) -> None:
    check = verifier(certs).check
    with pytest.raises(ForgedRecord, match="not signed"):
        check(record(), now())
    with pytest.raises(ForgedRecord, match="names 'e2', not the record's owner 'e1'"):
        check(signed_by(certs, "e2"), now())
    renamed = signed_by(certs, "e1")
    renamed.encoder_id = "e2"
    with pytest.raises(ForgedRecord, match="names 'e1', not the record's owner 'e2'"):
        check(renamed, now())
    borrowed = signed_by(certs, "e2")
    borrowed.certificate = signed_by(certs, "e1").certificate
    with pytest.raises(ForgedRecord, match="does not match"):
        check(borrowed, now())
    garbage = signed_by(certs, "e1")
    garbage.certificate = b"\x30\x03\x02\x01\x01"
    with pytest.raises(ForgedRecord, match=r"not a readable X\.509 certificate"):
        check(garbage, now())
    # Well-formed DER whose version field says 7 (found by the fuzz test): refused, not raised.
    versioned = signed_by(certs, "e1")
    v3 = b"\xa0\x03\x02\x01\x02"
    assert v3 in versioned.certificate
    versioned.certificate = versioned.certificate.replace(v3, v3[:-1] + b"\x07", 1)
    with pytest.raises(ForgedRecord, match=r"not a readable X\.509 certificate"):
        check(versioned, now())
    stranger = make_certificates(tmp_path / "other", ["e1"])
    with pytest.raises(ForgedRecord, match="not issued by the CA"):
        check(signed_by(stranger, "e1"), now())
    with pytest.raises(ForgedRecord, match="not now"):
        check(signed_by(certs, "e1"), now() + datetime.timedelta(days=365))


def test_signed_bytes_keep_field_boundaries_and_leave_ttl_and_signature_out() -> None:
    one = signed_bytes(record(address="a:1", segment_id="bc"))
    other = signed_bytes(record(address="a:1b", segment_id="c"))
    assert one != other
    assert signed_bytes(record(ttl_ms=1, signature=b"x", certificate=b"y")) == signed_bytes(
        record()
    )


def test_validation_bounds_the_signature_fields() -> None:
    with pytest.raises(validation.InvalidMessage, match=r"record\.certificate: must be at most"):
        validation.validate_store_request(
            registry_pb2.StoreRequest(
                record=record(
                    signature=b"s", certificate=b"c" * (validation.MAX_CERTIFICATE_BYTES + 1)
                )
            )
        )
    with pytest.raises(validation.InvalidMessage, match="signature: must be at most"):
        validation.validate_encoder_record(
            record(signature=b"s" * (validation.MAX_SIGNATURE_BYTES + 1), certificate=b"c")
        )
    with pytest.raises(validation.InvalidMessage, match="certificate: must be set together"):
        validation.validate_encoder_record(record(signature=b"s"))
    with pytest.raises(validation.InvalidMessage, match="signature: must be set together"):
        validation.validate_encoder_record(record(certificate=b"c"))


def _rsa_identity(certs: CertificateSet, name: str) -> tuple[bytes, bytes]:
    """An RSA key and a certificate naming ``meshenc://name``, issued by ``certs``' CA."""
    ca_key = serialization.load_pem_private_key((certs.folder / CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=5))
        .not_valid_after(now() + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"meshenc://{name}")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_rsa_keys_sign_too_and_other_keys_are_refused_at_start(certs: CertificateSet) -> None:
    key_pem, cert_pem = _rsa_identity(certs, "e1")
    message = record()
    RecordSigner(key_pem, cert_pem).sign(message)
    validation.validate_encoder_record(message)
    verifier(certs).check(message, now())
    message.capacity += 1
    with pytest.raises(ForgedRecord, match="does not match"):
        verifier(certs).check(message, now())

    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="ECDSA or RSA keys, not"):
        RecordSigner(other, cert_pem)
    e2_key = certs.files("e2").key.read_bytes()
    with pytest.raises(ValueError, match="not the private key's"):
        RecordSigner(e2_key, certs.files("e1").cert.read_bytes())
