"""The one shape in which every long-running stage reports how far it has come.

``synth``, ``extract``, ``build-zarr``, ``ingest``, ``train`` and ``predict`` each take a
``progress`` callable and call it with a :class:`Progress`; the CLI draws any of them with one
bar class, and a caller of the library (a notebook, a job runner) handles one type. A stage
reports either a count (``done`` of ``total`` ``unit``\\ s of ``task``) or a line worth showing
above the bar (``message``: the Dask cluster it started, the run it resumed). A part of a task
(a task and a ``label``) starts with a count of what was done before it (usually 0), so that a
display measures the part's rate from its start.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` (None while unknown) ``unit``\\ s of ``task``, or a ``message``.

    ``label`` tells the part of the task (``epoch 2/10``); ``stats`` holds figures shown beside
    the count, already formatted (``{"loss": "0.1234"}``).
    """

    task: str
    done: int = 0
    total: int | None = None
    unit: str = "sample"
    label: str = ""
    stats: dict[str, str] = field(default_factory=dict)
    message: str | None = None


#: What a stage's ``progress`` argument is called with.
ProgressCallback = Callable[[Progress], None]


def report(progress: ProgressCallback | None, event: Progress) -> None:
    """Hand ``event`` to ``progress`` when the caller asked for it."""
    if progress is not None:
        progress(event)


class Counter:
    """Turns increments into :class:`Progress` counts of one task (``add(n)`` per item done);
    safe to call from several threads (7-Zip's blocks are decoded by several)."""

    def __init__(self, progress: ProgressCallback | None, task: str, total: int | None = None,
                 unit: str = "sample"):
        self.progress, self.task, self.total, self.unit, self.done = progress, task, total, unit, 0
        self._lock = threading.Lock()

    def start(self, total: int | None = None) -> None:
        """Report the total before the first item, so a bar shows it from the start."""
        if total is not None:
            self.total = total
        report(self.progress, Progress(self.task, self.done, self.total, self.unit))

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            event = Progress(self.task, self.done, self.total, self.unit)
        report(self.progress, event)
