"""What the commands show while they work (a bar on a terminal, a line every few seconds in a
log file) and print when they finish.

Every stage reports :class:`~hpa_pipeline.common.progress.Progress` events; :class:`ProgressBar`
draws them. Each part of a task (``train epoch 2/10``, ``valid epoch 2/10``) gets a bar of its
own, so that its rate is its own and a finished part stays on screen as one line. A bar appears
only once its part has run half a second: a command that fails at once shows its message, and a
part with nothing to do shows nothing. When stderr is not a terminal (a batch job's log), bars
would be redrawn into one endless line, so a plain line is written instead, every
:data:`LOG_INTERVAL_S` seconds and when a part ends.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time

import click

#: problem lines a command prints before pointing to its report file for the rest
MAX_LINES = 50
#: seconds a part runs before its bar is drawn
BAR_DELAY_S = 0.5
#: seconds between two lines of one part when stderr is not a terminal
LOG_INTERVAL_S = 10.0


class ProgressBar:
    """Draws a stage's progress events: counts of the ``tasks`` named as bars (other tasks'
    counts are not drawn), messages of any task as lines above them.

    ``enabled`` is False under ``-q`` and on every torchrun process but the first, so that one
    process talks. ``file``, ``interactive`` and ``clock`` are there for tests (and for a caller
    that draws into something other than stderr). Safe to call from several threads (extract's
    decoder threads report bytes), which may deliver a part's counts out of order.
    """

    def __init__(self, *tasks: str, unit: str = "sample", enabled: bool = True, file=None,
                 interactive: bool | None = None, clock=time.monotonic, delay: float = BAR_DELAY_S,
                 interval: float = LOG_INTERVAL_S):
        self.tasks, self.unit, self.enabled = tasks, unit, enabled
        self.file = file if file is not None else sys.stderr
        self.interactive = _is_terminal(self.file) if interactive is None else interactive
        self.clock, self.delay, self.interval = clock, delay, interval
        self._part: _Part | None = None
        self._lock = threading.RLock()

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.message is not None:
            self.write(event.message)
        elif event.task in self.tasks:
            with self._lock:
                self._count(event)

    def _count(self, event) -> None:
        key = (event.task, event.label)
        if self._part is None or self._part.key != key:
            self._end_part()
            self._part = _Part(key, event, self.clock())
        part = self._part
        if part.finished:
            return
        part.move(event)
        now = self.clock()
        if self.interactive:
            self._draw(part, now)
        elif part.finished or now - part.last_line >= self.interval:
            self._line(part, now)
        if part.finished:
            self._end_part()

    def _draw(self, part: "_Part", now: float) -> None:
        """Move the part's bar, creating it once the part has run ``delay`` seconds."""
        if part.bar is None:
            if now - part.start < self.delay:  # a part done in under that is not drawn at all
                return
            part.bar = _tqdm(part, self.unit, self.file, self.clock)
        part.bar.total = part.total
        if part.stats:
            part.bar.set_postfix(part.stats, refresh=False)
        part.bar.update(part.done - part.bar.n)

    def _line(self, part: "_Part", now: float) -> None:
        """One plain line of the part: where it is, its rate since it started, its figures."""
        if part.done == part.first_done:  # nothing done yet, or nothing to do
            return
        self._print(part.describe(self.unit, now))
        part.last_line, part.shown = now, part.done

    def _end_part(self) -> None:
        """Close the current part's bar, leaving its last state on screen as a finished line (in a
        log, a last line for a part of unknown total)."""
        if self._part is not None and not self.interactive and self._part.done != self._part.shown:
            self._line(self._part, self.clock())
        if self._part is not None and self._part.bar is not None:
            self._part.bar.close()
            self._part.bar = None

    def write(self, line: str) -> None:
        """A line above the bar (the bar is redrawn below it); none when not ``enabled``."""
        if not self.enabled:
            return
        with self._lock:
            bar = self._part.bar if self._part is not None else None
            if bar is not None:
                bar.write(line, file=self.file)
            else:
                self._print(line)

    def _print(self, line: str) -> None:
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        """End the bar; whatever the command prints next starts on a line of its own."""
        with self._lock:
            self._end_part()


class _Part:
    """One part of a task (a task and its label) and how far it has come."""

    def __init__(self, key: tuple[str, str], event, now: float):
        self.key, self.start, self.last_line = key, now, now
        self.first_done, self.done, self.total = event.done, event.done, event.total
        self.shown = event.done  # the count of the last line written
        self.stats: dict[str, str] = {}
        self.bar = None

    @property
    def name(self) -> str:
        return " ".join(filter(None, self.key))

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def move(self, event) -> None:
        self.done, self.total = max(self.done, event.done), event.total  # a late, smaller count is old news
        self.stats = event.stats or self.stats

    def describe(self, unit: str, now: float) -> str:
        """``train epoch 1/2: 120/500 step (24%), 9.9 step/s, loss=0.51``"""
        elapsed = now - self.start
        count = _amount(self.done, unit) + (f"/{_amount(self.total, unit)}" if self.total is not None else "")
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        per_s = _amount((self.done - self.first_done) / elapsed, unit) + ("" if unit == "B" else f" {unit}")
        rate = f", {per_s}/s" if elapsed > 0 else ""
        stats = "".join(f", {k}={v}" for k, v in self.stats.items())
        counted = "" if unit == "B" else " " + plural(unit, self.total if self.total is not None else self.done)
        return f"{self.name}: {count}{counted}{share}{rate}{stats} [{elapsed:.0f}s]"


def plural(unit: str, n: float) -> str:
    """``sample`` -> ``samples``, ``batch`` -> ``batches``, unless there is exactly one."""
    if n == 1 or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def _amount(n: float, unit: str) -> str:
    if unit == "B":
        from tqdm import tqdm

        return tqdm.format_sizeof(n, "B", 1024)
    return f"{n:.1f}" if isinstance(n, float) else str(n)


def _tqdm(part: _Part, unit: str, file, clock):
    """A tqdm bar for ``part``, drawn at once. It is made once the part has run a while, so it
    keeps time by the part's clock (``clock``) from the part's start: its elapsed time and rate
    are the part's own, not those of the bar's time on screen."""
    from tqdm import tqdm

    scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    bar = tqdm(desc=part.name, total=part.total, initial=part.first_done, unit=unit, file=file, dynamic_ncols=True,
               smoothing=0, leave=True, **scale)
    bar._time = clock  # tqdm reads every time through this attribute
    bar.start_t, bar.last_print_t = part.start, clock()
    return bar


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_bar(*tasks: str, unit: str = "sample", enabled: bool = True):
    """``with progress_bar("ingest") as bar:`` a :class:`ProgressBar` that is closed however the
    block ends, so that an error's line is never glued to a bar; silent under ``hpa-pipe -q``."""
    bar = ProgressBar(*tasks, unit=unit, enabled=enabled and not quiet())
    try:
        yield bar
    finally:
        bar.close()


def note(line: str) -> None:
    """A line on stderr about what a command is doing, left out under ``hpa-pipe -q``."""
    if not quiet():
        click.echo(line, err=True)


def quiet() -> bool:
    """True under ``hpa-pipe -q``: no bars, no lines above them, only results and errors."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().obj or {}).get("verbosity", 0) < 0)


def finish_report(problems: list[tuple[str, str]], summary: str, report_file: str, exit_code: int) -> None:
    """Print each problem (``kind: line``, the first :data:`MAX_LINES`), then the summary line
    naming the report file, and exit with the report's status (3 when any sample failed)."""
    for kind, line in problems[:MAX_LINES]:
        click.echo(f"  {kind}: {line}", err=True)
    if len(problems) > MAX_LINES:
        click.echo(f"  ... and {len(problems) - MAX_LINES} more: see {report_file}", err=True)
    click.echo(f"{summary}; report in {report_file}")
    raise SystemExit(exit_code)
