"""Logging behind ``-v`` and ``-q``, as ``rio`` does: the library logs what it does to the
``hpa_pipeline`` loggers at DEBUG and INFO; the CLI shows those lines only when asked.

Verbosity 0 (the default) shows warnings; ``-v`` shows each step (DEBUG of ``hpa_pipeline``);
``-vv`` also the INFO lines of Dask and the other libraries underneath; ``-q`` only errors.
Lines go to stderr above any progress bar.
"""
from __future__ import annotations

import logging
import sys

#: loggers of the libraries underneath that ``-vv`` opens up
THIRD_PARTY = ("distributed", "dask", "numcodecs", "zarr")


class _AboveBars(logging.Handler):
    """Writes each record above the progress bars (tqdm redraws them below it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a logging failure must not end the command
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    """Set the ``hpa_pipeline`` logger (and, from ``-vv``, the libraries') for ``verbosity``
    (``-v`` count minus ``-q`` count)."""
    for name in ("hpa_pipeline", *THIRD_PARTY):  # the handlers of an earlier command in this process
        logger = logging.getLogger(name)
        for earlier in [h for h in logger.handlers if isinstance(h, _AboveBars)]:
            logger.removeHandler(earlier)
    ours = logging.getLogger("hpa_pipeline")
    handler = _AboveBars()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0
                                           else "%(levelname)s: %(message)s"))
    ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(logging.ERROR if verbosity < 0 else logging.WARNING if verbosity == 0 else logging.DEBUG)
    from ..prep import scheduler

    scheduler.DASK_LOG_LEVEL = logging.INFO if verbosity >= 2 else logging.ERROR
    if verbosity >= 2:
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger(name).addHandler(handler)
