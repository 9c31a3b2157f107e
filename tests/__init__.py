"""The test suite. Its processes run gRPC's I/O as the ``meshenc`` command does
(``meshenc.grpc_io``): chosen here, before any test module or fixture imports gRPC."""

import os

from meshenc.grpc_io import choose_grpc_io

choose_grpc_io(os.environ)
