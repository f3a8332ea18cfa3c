"""What the commands draw while they work (tqdm bars on stderr) and print when they finish.

A bar appears only after half a second, so a command that fails at once shows its message,
not an empty bar.
"""
from __future__ import annotations

import sys

import click

#: problem lines a command prints before pointing to its report file for the rest
MAX_LINES = 50


def _bar(**kwargs):
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, delay=0.5, **kwargs)


class ProgressBar:
    """Draws a stage's :class:`~hpa_pipeline.contract.progress.Progress` events as one bar.

    Counts of the ``tasks`` named move the bar (a new task or label, e.g. the next epoch,
    starts it again); counts of other tasks are not drawn; messages of any task are written
    above it. ``enabled`` is False on every torchrun process but the first, so one bar is drawn.
    """

    def __init__(self, *tasks: str, unit: str = "sample", enabled: bool = True):
        scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        self.tasks, self.enabled = tasks, enabled
        self.bar = _bar(unit=unit, desc=tasks[0], disable=not enabled, **scale)
        self._part: tuple[str, str] | None = None

    def __call__(self, event) -> None:
        if event.message is not None:
            if self.enabled:
                self.bar.write(event.message, file=sys.stderr)
            return
        if event.task not in self.tasks:
            return
        if (event.task, event.label) != self._part:
            if self._part is not None:  # the next part (epoch, phase) starts the bar again
                self.bar.reset(total=event.total)
            self._part = (event.task, event.label)
            self.bar.set_description(f"{event.task} {event.label}".strip(), refresh=False)
        self.bar.total = event.total
        if event.stats:
            self.bar.set_postfix(event.stats, refresh=False)
        self.bar.update(event.done - self.bar.n)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self):
        self.bar.close()


def finish_report(problems: list[tuple[str, str]], summary: str, report_file: str, exit_code: int) -> None:
    """Print each problem (``kind: line``, the first :data:`MAX_LINES`), then the summary line
    naming the report file, and exit with the report's status (3 when any sample failed)."""
    for kind, line in problems[:MAX_LINES]:
        click.echo(f"  {kind}: {line}", err=True)
    if len(problems) > MAX_LINES:
        click.echo(f"  ... and {len(problems) - MAX_LINES} more: see {report_file}", err=True)
    click.echo(f"{summary}; report in {report_file}")
    raise SystemExit(exit_code)
