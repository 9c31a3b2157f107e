"""Which of gRPC's I/O layers a meshenc process runs: gRPC's older ``iomgr`` TCP endpoints.

A mesh sends many small messages on long-lived streams: an ESP per frame to each of 3–7
neighbours, and as many received. Most of the CPU that costs is gRPC's per message
(``docs/mesh.md``, "Where the time goes"). This gRPC release has two I/O layers in it: its
EventEngine (the default for clients, listeners and the callback completion queue) and the
older ``iomgr``. In ``meshenc bench esp`` a node used 0.85× the CPU per frame on ``iomgr``
with 8 nodes and 0.90× with 4 (medians of interleaved runs, ``docs/mesh.md``).

gRPC's C core reads the choice from ``GRPC_EXPERIMENTS`` once, when it starts in the process,
so :func:`choose_grpc_io` must run before anything imports ``grpc``: the ``meshenc`` command
calls it first thing (``meshenc.cli.main``), and the processes it starts inherit the
variable. A ``GRPC_EXPERIMENTS`` the user has set (even empty, which leaves gRPC's defaults)
is left as it is. The experiments are named by this gRPC release, which the project pins; a
release without them logs ``Unknown experiment`` once and runs its defaults.

This module imports nothing of gRPC's, and must not.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

__all__ = ["EXPERIMENTS_VARIABLE", "MESH_IO_EXPERIMENTS", "choose_grpc_io"]

EXPERIMENTS_VARIABLE: Final = "GRPC_EXPERIMENTS"
"""The environment variable gRPC's C core reads its experiments from."""

MESH_IO_EXPERIMENTS: Final = "-event_engine_client,-event_engine_listener,-event_engine_callback_cq"
"""The EventEngine's client connections, listeners and callback completion queue turned off,
which puts every connection on ``iomgr``'s TCP endpoints."""


def choose_grpc_io(environ: MutableMapping[str, str]) -> bool:
    """Put :data:`MESH_IO_EXPERIMENTS` in ``environ`` unless it names gRPC experiments already.

    Returns:
        Whether it was put there (False: the user's choice stands).
    """
    if EXPERIMENTS_VARIABLE in environ:
        return False
    environ[EXPERIMENTS_VARIABLE] = MESH_IO_EXPERIMENTS
    return True
