"""The addresses a service listens on, as settings types every service's settings share.

A listen address is HOST:PORT where port 0 asks the kernel for a free port (tests, local runs).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from meshenc.wire.address import check_address

__all__ = ["ListenAddress", "MetricsListenAddress", "OutputListenAddress"]


def _listen(value: str) -> str:
    return check_address(value, "listen", lowest_port=0)


def _metrics_listen(value: str) -> str:
    return check_address(value, "metrics listen", lowest_port=0)


def _output_listen(value: str) -> str:
    return check_address(value, "serve-output listen", lowest_port=0)


#: Where a service's gRPC server listens.
ListenAddress = Annotated[str, AfterValidator(_listen)]
#: Where a service's Prometheus metrics endpoint listens.
MetricsListenAddress = Annotated[str, AfterValidator(_metrics_listen)]
#: Where an encoder serves its output folder over HTTP (``--serve-output``).
OutputListenAddress = Annotated[str, AfterValidator(_output_listen)]
