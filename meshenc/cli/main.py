"""Entry point of the ``meshenc`` console command.

Each subcommand's module is imported only when that subcommand runs (or when the help lists
it): ``meshenc encoder`` is what a restart after a crash runs, and importing every other
command with it (the benchmarks' plotting, the simulator, the chaos run) kept a restarted
encoder from its first picture for a good part of a second, on a segment of one second.
"""

from __future__ import annotations

import importlib
import os

import click

from meshenc import __version__
from meshenc.grpc_io import choose_grpc_io

# Before any subcommand's module imports gRPC, which reads it once (``meshenc.grpc_io``).
choose_grpc_io(os.environ)

#: Subcommand name → ``module:attribute`` (the help lists them by name, as before).
COMMANDS: dict[str, str] = {
    # Running the mesh.
    "up": "meshenc.cli.up:up",
    "encoder": "meshenc.cli.encoder:encoder",
    "registry": "meshenc.cli.registry:registry",
    "manager": "meshenc.cli.manager:manager",
    "source": "meshenc.cli.source:source",
    "clip": "meshenc.cli.source:clip",
    "certs": "meshenc.cli.certs:certs",
    "chaos": "meshenc.cli.chaos:chaos",
    # Looking at a running mesh and at its outputs.
    "status": "meshenc.cli.inspect:status",
    "topology": "meshenc.cli.inspect:topology",
    "segments": "meshenc.cli.inspect:segments",
    "events": "meshenc.cli.inspect:events",
    "verify": "meshenc.cli.verify:verify",
    "report": "meshenc.cli.report:report",
    "health-check": "meshenc.cli.health:health_check",
    # The simulator and the benchmarks.
    "sim": "meshenc.cli.sim:sim",
    "bench": "meshenc.cli.bench:bench",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when asked for, by name (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if (command := super().get_command(ctx, cmd_name)) is not None:
            return command
        if (target := COMMANDS.get(cmd_name)) is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        self.add_command(command, cmd_name)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="meshenc")
def cli() -> None:
    """meshenc: a mesh of live encoders that keep their outputs frame-locked."""
