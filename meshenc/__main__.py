"""``python -m meshenc``: the same command line as the ``meshenc`` console script."""

from meshenc.cli.main import cli

cli()
