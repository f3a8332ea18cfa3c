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


class SampleBar:
    """``progress(advance, total)`` callback drawing a bar of samples (build-zarr, ingest)."""

    def __init__(self, desc: str):
        self.bar = _bar(unit="sample", desc=desc)

    def __call__(self, advance, total):
        self.bar.total = total
        self.bar.update(advance)

    def close(self):
        self.bar.close()


class ByteBar:
    """``on_plan(total)`` and ``on_bytes(n)`` callbacks drawing a bar of bytes (extract)."""

    def __init__(self, desc: str):
        self.bar = _bar(unit="B", unit_scale=True, unit_divisor=1024, desc=desc)

    def on_plan(self, total):
        self.bar.total = total
        self.bar.refresh()

    def on_bytes(self, n):
        self.bar.update(n)

    def write(self, line: str):
        self.bar.write(line, file=sys.stderr)

    def close(self):
        self.bar.close()


class StepBar:
    """``progress(done, total)`` callback drawing a bar of batches (predict)."""

    def __init__(self, desc: str, unit: str = "batch"):
        self.bar = _bar(unit=unit, desc=desc)

    def __call__(self, done, total):
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self):
        self.bar.close()


class TrainBar:
    """``progress(info)`` callback of training: the start line, then one bar per phase and epoch
    (train steps with loss and speed, validation steps). ``enabled`` is False on every torchrun
    process but the first, so one bar is drawn."""

    def __init__(self, enabled: bool = True):
        self.bar = _bar(unit="step", desc="train", disable=not enabled)

    def __call__(self, info: dict):
        if info["phase"] in ("resumed", "started"):
            self.bar.write(info["message"])
            return
        if self.bar.total != info["steps"] or self.bar.desc.split()[0] != info["phase"]:
            self.bar.reset(total=info["steps"])
        self.bar.set_description(f"{info['phase']} epoch {info['epoch']}/{info['epochs']}")
        if info["phase"] == "train":
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", img_s=f"{info['img_s']:.1f}")
        self.bar.n = info["step"]
        self.bar.refresh()

    def close(self):
        self.bar.close()


def print_cluster(info: dict) -> None:
    """The cluster line, written above the progress bar (never into it)."""
    from tqdm import tqdm

    if info["scheduler"].startswith("this process"):
        tqdm.write("dask: not started; one worker (--workers 1) runs each sample in this process", file=sys.stderr)
        return
    dashboard = (f"; dashboard {info['dashboard']}" if info["dashboard"] else
                 " (no dashboard: it comes with --cluster processes, a recipe or --scheduler, and needs bokeh)")
    tqdm.write(f"dask: {info['workers']} worker(s), {info['threads']} thread(s) at {info['scheduler']}{dashboard}",
               file=sys.stderr)


def finish_report(problems: list[tuple[str, str]], summary: str, report_file: str, exit_code: int) -> None:
    """Print each problem (``kind: line``, the first :data:`MAX_LINES`), then the summary line
    naming the report file, and exit with the report's status (3 when any sample failed)."""
    for kind, line in problems[:MAX_LINES]:
        click.echo(f"  {kind}: {line}", err=True)
    if len(problems) > MAX_LINES:
        click.echo(f"  ... and {len(problems) - MAX_LINES} more: see {report_file}", err=True)
    click.echo(f"{summary}; report in {report_file}")
    raise SystemExit(exit_code)
