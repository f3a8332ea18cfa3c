"""``hpa-pipe``: one Click group, one thin command per stage (rasterio's ``rio`` is the model).

Each command parses its options, calls one library function, reports, and sets the exit status;
the work lives in the library modules, where tests and notebooks call it directly. Heavy imports
(dask, zarr, torch) happen inside the commands, so ``hpa-pipe --help`` is instant.

- :mod:`.group`: the ``hpa-pipe`` group, the list of its commands, and :func:`main`.
- :mod:`.recipes`: ``--config recipe.yaml`` (option defaults per command, checked by name).
- :mod:`.options`: option sets that several commands share, and checks made before any work.
- :mod:`.progress`: progress bars and the printing of reports.
- :mod:`.prep_commands`, :mod:`.model_commands`: the commands of each half.

A new command is a function in its half's module and one entry in :data:`.group.COMMANDS`.
"""
from ..common.machine import one_blas_thread

one_blas_thread()  # before anything imports NumPy

from .group import cli, main  # noqa: E402

__all__ = ["cli", "main"]
