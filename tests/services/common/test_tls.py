"""Renewed certificates on a real server and real channels: a ``GrpcServer`` on 127.0.0.1 with
mutual TLS and ``meshenc certs`` certificates, the files replaced while it runs.

What the server presents is read with Python's ``ssl`` module (a TLS handshake against the
port); what a client presents is read on the server side of real gRPC calls (the probe answers
``meshenc.v1.Registry/Ping`` and keeps each caller's certificate from its ``auth_context``), so
that :class:`~services.common.registry_client.RegistryChannels`, which keeps its channels, is
the client under test.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from meshenc.v1 import manager_pb2, registry_pb2
from services.common.certs import CA_CERT, CA_KEY, CertificateSet, make_certificates
from services.common.grpc_server import GrpcServer
from services.common.registry_client import SERVICE_NAME, RegistryChannels
from services.common.tls import MANAGER, REGISTRY, TlsFiles, record_signer, server_credentials
from services.encoder.manager_link import ManagerLink

_MANAGER = manager_pb2.DESCRIPTOR.services_by_name["MeshManager"].full_name


def _serial(pem_or_der: bytes) -> int:
    if pem_or_der.startswith(b"-----"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


def _file_serial(path: Path) -> int:
    return _serial(path.read_bytes())


def _served_serial(port: int, client: TlsFiles) -> int:
    """The serial of the certificate the server on ``port`` presents to a new connection."""
    context = ssl.create_default_context(cafile=str(client.ca))
    context.check_hostname = False
    context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return _serial(der)


class _Probe:
    """``Registry/Ping`` and ``MeshManager/ReportHealth`` (which ends each stream at its first
    report) that record the serial of each caller's certificate."""

    def __init__(self) -> None:
        self.callers: list[int] = []

    def register(self, server: Any) -> None:
        ping = grpc.unary_unary_rpc_method_handler(
            self._ping,
            request_deserializer=registry_pb2.PingRequest.FromString,
            response_serializer=registry_pb2.PingResponse.SerializeToString,
        )
        report = grpc.stream_unary_rpc_method_handler(
            self._report,
            request_deserializer=manager_pb2.HealthReport.FromString,
            response_serializer=manager_pb2.HealthAck.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE_NAME, {"Ping": ping}),
                grpc.method_handlers_generic_handler(_MANAGER, {"ReportHealth": report}),
            )
        )

    def _record(self, context: Any) -> None:
        self.callers.append(_serial(context.auth_context()["x509_pem_cert"][0]))

    async def _ping(self, request: registry_pb2.PingRequest, context: Any) -> Any:
        self._record(context)
        return registry_pb2.PingResponse()

    async def _report(self, requests: Any, context: Any) -> Any:
        await anext(aiter(requests))
        self._record(context)
        return manager_pb2.HealthAck()


def _other_issuance(certs: CertificateSet, scratch: Path, name: str) -> TlsFiles:
    """A new certificate and key for ``name`` from the same CA, written elsewhere."""
    scratch.mkdir()
    for part in (CA_CERT, CA_KEY):
        shutil.copy(certs.folder / part, scratch / part)
    return make_certificates(scratch, [name]).files(name)


def test_a_renewed_certificate_is_used_by_new_connections_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = make_certificates(tmp_path / "certs", [REGISTRY, "e1"])
    server_files, client_files = certs.files(REGISTRY), certs.files("e1")
    first_server, first_client = _file_serial(server_files.cert), _file_serial(client_files.cert)
    probe = _Probe()

    async def ping(channels: RegistryChannels, port: int) -> None:
        await channels.stub(f"127.0.0.1:{port}").Ping(registry_pb2.PingRequest(), timeout=5.0)

    async def main() -> None:
        server = GrpcServer({SERVICE_NAME: probe.register}, tls=server_files)
        port = await server.start("127.0.0.1:0")
        channels = RegistryChannels(tls=client_files)
        try:
            assert await asyncio.to_thread(_served_serial, port, client_files) == first_server
            await ping(channels, port)
            assert probe.callers == [first_client]

            make_certificates(certs.folder, [REGISTRY, "e1"])  # both renewed in place
            second_server = _file_serial(server_files.cert)
            second_client = _file_serial(client_files.cert)
            assert second_server != first_server and second_client != first_client
            assert await asyncio.to_thread(_served_serial, port, client_files) == second_server
            await ping(channels, port)  # the kept channel is opened again with the new files
            assert probe.callers[-1] == second_client

            # Half-written: the new key is there, its certificate not yet.
            third = _other_issuance(certs, tmp_path / "third", REGISTRY)
            shutil.copy(third.key, server_files.key)
            with caplog.at_level(logging.WARNING, logger="meshenc.tls"):
                for _ in range(3):
                    served = await asyncio.to_thread(_served_serial, port, client_files)
                    assert served == second_server
                await ping(channels, port)
            kept = [r for r in caplog.records if "kept the previous" in r.getMessage()]
            assert len(kept) == 1, [r.getMessage() for r in kept]
            assert str(server_files.key) in kept[0].getMessage()

            shutil.copy(third.cert, server_files.cert)  # now complete
            assert await asyncio.to_thread(_served_serial, port, client_files) == _file_serial(
                third.cert
            )
            await ping(channels, port)
        finally:
            await channels.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30.0))


def test_the_manager_link_dials_again_with_renewed_files(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", [MANAGER, "e1"])
    client_files = certs.files("e1")
    probe = _Probe()

    async def reported_by(serial: int) -> None:
        while serial not in probe.callers:
            await asyncio.sleep(0.02)

    async def main() -> None:
        server = GrpcServer({_MANAGER: probe.register}, tls=certs.files(MANAGER))
        port = await server.start("127.0.0.1:0")
        link = ManagerLink(
            f"127.0.0.1:{port}",
            lambda: manager_pb2.HealthReport(encoder_id="e1"),
            interval=0.05,
            backoff_base=0.05,
            backoff_cap=0.2,
            tls=client_files,
        )
        running = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(reported_by(_file_serial(client_files.cert)), 10.0)
            make_certificates(certs.folder, ["e1"])
            await asyncio.wait_for(reported_by(_file_serial(client_files.cert)), 10.0)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await link.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30.0))


def test_a_key_that_is_not_the_certificates_is_refused_at_start(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", ["server"])
    other = _other_issuance(certs, tmp_path / "other", "server")
    files = certs.files("server")
    mixed = TlsFiles(ca=files.ca, cert=files.cert, key=other.key)
    with pytest.raises(ValueError, match="is not the key of"):
        server_credentials(mixed)


def test_records_are_signed_with_the_renewed_certificate_and_a_half_written_one_is_not_taken(
    tmp_path: Path,
) -> None:
    certs = make_certificates(tmp_path / "certs", ["e1"])
    files = certs.files("e1")
    record = registry_pb2.EncoderRecord(encoder_id="e1", address="127.0.0.1:1", version=1)

    def signed_by() -> int:
        record_signer(files).sign(record)
        return _serial(record.certificate)

    first = signed_by()
    assert first == _file_serial(files.cert)
    renewed = _other_issuance(certs, tmp_path / "renewed", "e1")
    shutil.copy(renewed.key, files.key)  # half-written: the new key, the old certificate
    assert signed_by() == first
    shutil.copy(renewed.cert, files.cert)
    assert signed_by() == _file_serial(renewed.cert) != first
