"""Entry point of the ``meshenc`` console command."""

from __future__ import annotations

import click

from meshenc import __version__
from meshenc.cli.bench import bench
from meshenc.cli.certs import certs
from meshenc.cli.chaos import chaos
from meshenc.cli.encoder import encoder
from meshenc.cli.health import health_check
from meshenc.cli.inspect import events, segments, status, topology
from meshenc.cli.manager import manager
from meshenc.cli.registry import registry
from meshenc.cli.report import report
from meshenc.cli.sim import sim
from meshenc.cli.source import clip, source
from meshenc.cli.up import up
from meshenc.cli.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meshenc")
def cli() -> None:
    """meshenc: a mesh of live encoders that keep their outputs frame-locked."""


# Running the mesh.
cli.add_command(up)
cli.add_command(encoder)
cli.add_command(registry)
cli.add_command(manager)
cli.add_command(source)
cli.add_command(clip)
cli.add_command(certs)
cli.add_command(chaos)
# Looking at a running mesh and at its outputs.
cli.add_command(status)
cli.add_command(topology)
cli.add_command(segments)
cli.add_command(events)
cli.add_command(verify)
cli.add_command(report)
cli.add_command(health_check)
# The simulator and the benchmarks.
cli.add_command(sim)
cli.add_command(bench)
