"""The ``meshenc`` command group: subcommands are imported only when they run."""

from __future__ import annotations

import subprocess
import sys

import click

from meshenc.cli.main import COMMANDS, cli

#: Modules that ``meshenc encoder`` must not wait for: a restarted encoder's first picture
#: waited for all of them (the benchmarks' plotting, the simulator, the Kubernetes client).
HEAVY = ("matplotlib", "meshenc.bench", "meshenc.sim", "meshenc.report", "kubernetes_asyncio")


def test_the_encoder_command_imports_none_of_the_other_commands_heavy_modules() -> None:
    """In a fresh interpreter, as a restart runs it: the ``encoder`` command resolved and its
    help shown (which loads every module the command needs to run), nothing heavy it does
    not use is imported."""
    probe = (
        "import sys, click\n"
        "from meshenc.cli.main import cli\n"
        "try:\n"
        "    cli.main(['encoder', '--help'], standalone_mode=False)\n"
        "except click.exceptions.Exit:\n"
        "    pass\n"
        f"print('imported:', *(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Run one live encoder" in result.stdout
    assert result.stdout.splitlines()[-1] == "imported:", result.stdout.splitlines()[-1]


def test_every_listed_command_resolves_to_a_click_command_of_that_name() -> None:
    context = click.Context(cli)
    assert cli.list_commands(context) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert cli.get_command(context, "no-such-command") is None
