"""What an encoder process imports when it starts: not what it never uses.

Every process of a local mesh is a ``meshenc`` command. The command used to import every
subcommand's module (the benchmarks, the simulator, the report's matplotlib) and every encoder
the Kubernetes client, about a second of CPU per process, which a machine starting dozens of
encoders at once runs out of first (``docs/performance.md``). A fresh interpreter resolves
the ``encoder`` command as ``meshenc encoder`` does and imports its runtime; the libraries it
does not need must not be loaded. (What the imports cost is ``meshenc bench scale``'s
business, not a test's.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kubernetes_asyncio.client.exceptions import ApiException

from services.common.kubernetes import api_status

REPO_ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from meshenc.cli.main import cli
import click
command = cli.get_command(click.Context(cli), "encoder")
import services.encoder.runtime
wanted = ["matplotlib", "meshenc.bench", "meshenc.sim", "kubernetes_asyncio"]
print(json.dumps({"command": command.name, "loaded": [m for m in wanted if m in sys.modules]}))
"""


def test_an_encoder_process_loads_neither_the_benchmarks_nor_plotting_nor_kubernetes() -> None:
    found = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    probe = json.loads(found.stdout)
    assert probe == {"command": "encoder", "loaded": []}


def test_api_status_reads_a_kubernetes_api_error_and_no_other() -> None:
    assert api_status(ApiException(status=503)) == 503
    assert api_status(ApiException(status=None)) == 0
    assert api_status(ValueError("not from the API")) is None
