"""Checkpoints (``best.pt``, ``last.pt``): tensors and plain values only, loaded without running code.

A run folder may come from someone else (a shared disk, a download). ``torch.load`` of an
arbitrary pickle runs whatever the pickle names, so every checkpoint is loaded with
``weights_only=True``: tensors, numbers, strings, lists, tuples and dicts, nothing callable.
What the trainer saves is kept to those types (the NumPy random state is stored as a tensor
and plain numbers, not as NumPy objects). A file that needs more, or is damaged, is refused
with one line naming it.
"""
from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..contract.atomic import replacing
from .run_folder import RunError


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` whole or not at all (a temporary name, then a rename); the
    earlier checkpoint stays when the disk fills up."""
    with replacing(path) as tmp:  # streamed to disk: a checkpoint can be GBs
        try:
            torch.save(obj, tmp)
        except RuntimeError:  # torch's writer reports a failed write as "unexpected pos" & co.
            if _disk_full(tmp):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise


def _disk_full(path: Path) -> bool:
    """Whether the file system of ``path`` has (next to) no space left: the cause of a failed write."""
    import shutil

    return shutil.disk_usage(path.parent).free < 1 << 20


def load_checkpoint(path: Path, device) -> dict:
    """The dict saved at ``path``; :class:`RunError` naming the file when it is not one."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path}: refused: a checkpoint may hold only tensors and plain values, and loading "
                       f"this one would run code or build other objects ({reason[:200]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise RunError(f"{path}: not a readable checkpoint, damaged or cut short ({type(exc).__name__}: "
                       f"{str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise RunError(f"{path}: not a checkpoint of this project (holds a {type(state).__name__}, not a dict)")
    return state


def load_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """Load ``weights`` into ``model``; :class:`RunError` naming ``path`` when they do not fit."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise RunError(f"{path}: its weights do not fit this run's model (another architecture?): "
                       f"{str(exc).splitlines()[0][:300]}") from None
