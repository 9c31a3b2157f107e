"""``meshenc certs`` and the identity rules of ``services.common.tls``, without a network."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from meshenc.cli.main import cli
from services.common.certs import CA_KEY, certificate_identity, make_certificates
from services.common.tls import check_identity, identity_uri, peer_identity


def _names(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_the_command_writes_a_ca_and_one_certificate_per_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "--out", str(tmp_path), "--names", "e1,operator"])
    assert result.exit_code == 0, result.output
    for name in ("e1", "operator"):
        names = _names(tmp_path / f"{name}.crt")
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [f"meshenc://{name}"]
        assert names.get_values_for_type(x509.DNSName) == [name, "localhost"]
        assert set(names.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
        assert stat.S_IMODE((tmp_path / f"{name}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / CA_KEY).stat().st_mode) == 0o600


def test_a_second_run_signs_new_names_with_the_same_ca(tmp_path: Path) -> None:
    first = make_certificates(tmp_path, ["e1"])
    ca = first.ca.read_bytes()
    second = make_certificates(tmp_path, ["e2"])
    assert second.ca.read_bytes() == ca
    issuer = x509.load_pem_x509_certificate(ca)
    for name in ("e1", "e2"):
        cert = x509.load_pem_x509_certificate(second.files(name).cert.read_bytes())
        cert.verify_directly_issued_by(issuer)


@pytest.mark.parametrize("names", ["", "e1,bad name", "x" * 129])
def test_names_that_cannot_be_identities_are_refused(tmp_path: Path, names: str) -> None:
    result = CliRunner().invoke(cli, ["certs", "--out", str(tmp_path), "--names", names])
    assert result.exit_code == 2, result.output


def test_identity_rules() -> None:
    assert identity_uri("e-1.a_b") == "meshenc://e-1.a_b"
    with pytest.raises(ValueError, match="identity"):
        check_identity("e/1")


class _Context:
    def __init__(self, properties: dict[str, list[bytes]]) -> None:
        self._properties = properties

    def auth_context(self) -> dict[str, Any]:
        return self._properties


def test_the_peer_identity_is_the_meshenc_uri_only() -> None:
    assert peer_identity(_Context({})) is None  # plaintext
    assert peer_identity(_Context({"peer_uri": [b"spiffe://x/y", b"meshenc://e7"]})) == "e7"
    assert peer_identity(_Context({"peer_uri": [b"meshenc://bad name"]})) is None
    assert peer_identity(_Context({"x509_common_name": [b"e7"]})) is None


def test_an_encoder_refuses_a_certificate_that_names_another_encoder(tmp_path: Path) -> None:
    made = make_certificates(tmp_path / "certs", ["e1", "e2"])
    assert certificate_identity(made.files("e2").cert) == "e2"
    files = made.files("e2")
    result = CliRunner().invoke(
        cli,
        [
            "encoder",
            "--id",
            "e1",
            "--out",
            str(tmp_path / "out"),
            "--tls-ca",
            str(files.ca),
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "names 'e2', not this encoder's id 'e1'" in result.output


def test_an_encoder_with_a_registry_refuses_a_key_that_cannot_sign_its_records(
    tmp_path: Path,
) -> None:
    """Its records would be refused by every replica: say so at start, naming the flag."""
    made = make_certificates(tmp_path / "certs", ["e1", "e2"])
    own, other = made.files("e1"), made.files("e2")
    base = ["encoder", "--id", "e1", "--out", str(tmp_path / "out")]
    flags = ["--tls-ca", str(own.ca), "--tls-cert", str(own.cert), "--tls-key", str(other.key)]
    result = CliRunner().invoke(cli, [*base, *flags, "--registry", "127.0.0.1:7500"])
    assert result.exit_code == 2, result.output
    assert "--tls-key cannot sign registry records" in result.output
    assert "e2.key is not the key of" in result.output
    (tmp_path / "not-a-key.pem").write_text("not a key")
    flags[-1] = str(tmp_path / "not-a-key.pem")
    result = CliRunner().invoke(cli, [*base, *flags, "--registry", "127.0.0.1:7500"])
    assert result.exit_code == 2, result.output
    assert "not-a-key.pem holds no unencrypted PEM key" in result.output


@pytest.mark.parametrize(
    "flags",
    [
        [],  # neither certificates nor --insecure
        ["--insecure", "--tls-ca", "ca.crt"],
        ["--tls-ca", "ca.crt"],  # not all three
    ],
)
def test_a_service_needs_certificates_or_an_explicit_insecure(
    tmp_path: Path, flags: list[str]
) -> None:
    result = CliRunner().invoke(cli, ["registry", "--listen", "127.0.0.1:0", *flags])
    assert result.exit_code == 2, result.output
    assert "--insecure" in result.output
