"""Entry point of the ``meshenc`` console command.

A command's module is imported only when that command runs (or ``--help`` lists them all):
every process of a local mesh is a ``meshenc`` command, and importing the benchmarks, the
report's plotting and the simulator into each encoder, registry and manager cost about a
second of CPU per process, which a machine starting dozens of them at once runs out of first.
"""

from __future__ import annotations

import importlib

import click

from meshenc import __version__

#: Command name → "module:attribute", in the order ``--help`` lists them.
_COMMANDS: dict[str, str] = {
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


class _LazyGroup(click.Group):
    """A group whose commands are imported when they are looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="meshenc")
def cli() -> None:
    """meshenc: a mesh of live encoders that keep their outputs frame-locked."""
