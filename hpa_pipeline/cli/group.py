"""The ``hpa-pipe`` group: its commands in the order of the stages, and the entry point."""
from __future__ import annotations

import sys

import click

from .. import __version__
from . import model_commands, prep_commands
from .recipes import load_recipe

#: every command, in the order of the stages (``hpa-pipe --help`` lists them so)
COMMANDS = (prep_commands.synth, prep_commands.extract, prep_commands.build_zarr, prep_commands.ingest,
            prep_commands.inspect, prep_commands.export_ngff, model_commands.train, model_commands.predict,
            model_commands.evaluate)


class StageOrder(click.Group):
    """Lists commands in the order they were added (the stages), not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=StageOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpa-pipe")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_recipe,
              is_eager=True, expose_value=False,
              help="YAML recipe (see pipelines/) giving option defaults per command.")
def cli():
    """Human Protein Atlas full-size archives -> chunked Zarr -> SENet classifiers.

    Stages: synth | extract, build-zarr or ingest | inspect, export-ngff | train | predict | evaluate.
    """


for _command in COMMANDS:
    cli.add_command(_command)


def main():
    """The ``hpa-pipe`` entry point: Click's standalone handling, except that Ctrl-C exits with
    status 130 and one line saying what was saved (never a traceback)."""
    from ..contract.atomic import Interrupted

    try:
        code = cli.main(prog_name="hpa-pipe", standalone_mode=False)
    except click.exceptions.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        message = str(cause) if isinstance(cause, Interrupted) else (
            "interrupted: nothing was left half-written; run the same command again to resume")
        click.echo(f"\n{message}", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
