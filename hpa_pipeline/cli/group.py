"""The ``hpa-pipe`` group: its commands in the order of the stages, and the entry point."""
from __future__ import annotations

import os
import signal
import sys
import traceback

import click

from .. import __version__
from . import deploy_commands, model_commands, prep_commands
from .recipes import load_recipe

#: every command, in the order of the stages (``hpa-pipe --help`` lists them so)
COMMANDS = (prep_commands.synth, prep_commands.extract, prep_commands.build_zarr, prep_commands.ingest,
            prep_commands.inspect, prep_commands.verify, prep_commands.duplicates,
            prep_commands.export_ngff, model_commands.train, model_commands.thresholds, model_commands.predict,
            model_commands.evaluate, deploy_commands.export, deploy_commands.classify)


class StageOrder(click.Group):
    """Lists commands in the order they were added (the stages), not alphabetically, and turns
    the errors a user can act on into one line (:mod:`hpa_pipeline.contract.errors`)."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        from ..contract.errors import HpaError, explain_os_error

        try:
            return super().invoke(ctx)
        except click.exceptions.NoSuchOption as exc:
            raise _with_our_name(exc) from None
        except HpaError as exc:
            if _debugging(ctx):
                raise
            raise OneLine(exc.line(), exc.exit_code, exc.label) from None
        except OSError as exc:
            line = None if _debugging(ctx) else explain_os_error(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None


class OneLine(click.ClickException):
    """An :class:`..contract.errors.HpaError` as the CLI shows it: ``label: line``, and its exit code."""

    def __init__(self, message: str, exit_code: int, label: str = "Error"):
        super().__init__(message)
        self.exit_code, self.label = exit_code, label

    def show(self, file=None) -> None:
        click.echo(f"{self.label}: {self.format_message()}", err=True, file=file)


def _with_our_name(exc: click.exceptions.NoSuchOption) -> click.exceptions.NoSuchOption:
    """``--learning-rate`` (another tool's name) suggests ``--lr`` (ours), as recipes do."""
    from .recipes import ALIASES

    ours = ALIASES.get(exc.option_name.lstrip("-").replace("-", "_"))
    if ours is None:
        return exc
    return click.exceptions.NoSuchOption(
        exc.option_name, message=f"No such option {exc.option_name!r}. Did you mean '--{ours.replace('_', '-')}'?",
        ctx=exc.ctx)


def _debugging(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug"))


def _set_debug(ctx, param, value) -> None:
    ctx.ensure_object(dict)["debug"] = value or os.environ.get("HPA_PIPE_DEBUG", "") not in ("", "0")


@click.group(cls=StageOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpa-pipe")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=load_recipe,
              is_eager=True, expose_value=False,
              help="YAML recipe (see pipelines/) giving option defaults per command.")
@click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set_debug,
              help="Show the traceback of every error, not only of bugs (also: HPA_PIPE_DEBUG=1).")
@click.option("-v", "--verbose", count=True, help="Say more of what is done: -v each step, -vv also Dask's own log.")
@click.option("-q", "--quiet", count=True, help="No progress bars or notes; only results, problems and errors.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Human Protein Atlas full-size archives -> chunked Zarr -> SENet classifiers.

    Stages: synth | extract, build-zarr or ingest | inspect, verify, duplicates, export-ngff |
    train, thresholds | predict | evaluate | export, classify.
    """
    from .log import configure_logging

    ctx.ensure_object(dict)["verbosity"] = verbose - quiet
    configure_logging(verbose - quiet)


for _command in COMMANDS:
    cli.add_command(_command)


_terminated = False
#: the commands whose rerun goes on where an interrupted run stopped
RESUMABLE = ("extract", "build-zarr", "ingest", "train", "verify")


def _stop_as_on_ctrl_c(signum, frame) -> None:
    """SIGTERM (a batch system's stop, ``kill``, ``timeout``) ends a command as Ctrl-C does:
    what is finished is saved and the command says so; it exits 143 instead of 130."""
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt


def _explained_under_debug(exc: Exception) -> None:
    """Under ``--debug`` a user's error keeps its traceback (shown already), then its one line
    and its exit status: it is not called a bug."""
    from ..contract.errors import EXIT_ERROR, HpaError, explain_os_error

    if isinstance(exc, HpaError):
        click.echo(f"{exc.label}: {exc.line()}", err=True)
        sys.exit(exc.exit_code)
    line = explain_os_error(exc) if isinstance(exc, OSError) else None
    if line is not None:
        click.echo(f"Error: {line}", err=True)
        sys.exit(EXIT_ERROR)


def main():
    """The ``hpa-pipe`` entry point: Click's standalone handling, except that Ctrl-C exits with
    status 130 and one line saying what was saved (never a traceback), and a bug shows its
    traceback with a request to report it."""
    from ..contract.atomic import Interrupted
    from ..contract.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED

    signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)
    try:
        code = cli.main(prog_name="hpa-pipe", standalone_mode=False)
    except click.exceptions.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        resumable = any(arg in RESUMABLE for arg in sys.argv[1:])
        message = str(cause) if isinstance(cause, Interrupted) else (
            "interrupted: nothing was left half-written" + ("; run the same command again to resume" if resumable
                                                            else ""))
        click.echo(f"\n{message}", err=True)
        sys.exit(EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: its traceback, and a request to report it
        traceback.print_exc()
        _explained_under_debug(exc)
        click.echo("hpa-pipe: this is a bug in hpa-pipeline, not a problem with your data or options; please "
                   "report it with the traceback above", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)
