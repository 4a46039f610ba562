"""Reading checkpoint files safely: a truncated or foreign file fails with a message that names it.

``torch.load`` reports a truncated checkpoint as ``PytorchStreamReader failed reading zip archive`` or
``OSError: [Errno 22]``, and a file of random bytes as ``Weights only load failed``, with advice to load it with
``weights_only=False``: unsafe for a file of unknown origin, since unpickling it can run arbitrary code. Here every
load is weights-only, and a file that does not load is an :class:`UnreadableCheckpoint` naming the file and why.
The ``lightning-meta`` command checks ``--ckpt_path`` this way before the Trainer reads it; in Python,
:func:`readable_checkpoint` does the same for ``load_from_checkpoint``.

A checkpoint written by ``lightning-meta`` names its model's class (``hyper_parameters["_class_path"]``). Loaded into
another class, Lightning refuses it as if it were an attack ("blocked to prevent arbitrary code execution"); here it
is one line naming both classes (:func:`check_model_class`; ``readable_checkpoint(path, ModelClass)``, and the
recipes' modules do it in their own ``load_from_checkpoint``: :class:`ChecksCheckpointClass`).

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 7}, folder / "good.ckpt")
    >>> load_checkpoint(folder / "good.ckpt")["global_step"]
    7
    >>> _ = (folder / "bad.ckpt").write_bytes((folder / "good.ckpt").read_bytes()[:100])  # truncated
    >>> readable_checkpoint(folder / "bad.ckpt")
    Traceback (most recent call last):
    ...
    lightning_meta.checkpoint_files.UnreadableCheckpoint: .../bad.ckpt is not a readable checkpoint: it is truncated ...
    >>> import shutil; shutil.rmtree(folder)  # the example leaves no files behind
"""

from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that does not load: truncated, damaged, not written by ``torch.save``, or holding objects a
    weights-only load refuses."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The Lightning checkpoint at ``path``, loaded weights-only and memory-mapped (tensors are read when used).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        UnreadableCheckpoint: the file is not a readable Lightning checkpoint (the message says why).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    is_zip = zipfile.is_zipfile(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if is_zip and refused:
            why = f"it holds a {refused.group(1)} object, which a weights-only load refuses to run"
        else:
            why = "it is not a file that torch.save wrote"
        raise UnreadableCheckpoint(f"{path} is not a readable checkpoint: {why}") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        raise UnreadableCheckpoint(f"{path} is not a readable checkpoint: {_damage(path)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint: torch.save wrote it, but it is no Lightning checkpoint (it has no "
            "'state_dict')"
        )
    return checkpoint


class WrongModelCheckpoint(ValueError):
    """A checkpoint of one model class given to another."""


def readable_checkpoint(path: str | Path, model_class: type | None = None) -> Path:
    """``path``, once :func:`load_checkpoint` has read it (and, given ``model_class``, :func:`check_model_class` has
    found it is that model's): ``Model.load_from_checkpoint(readable_checkpoint(path, Model))`` fails with a message
    naming the file instead of deep inside ``torch.load``."""
    checkpoint = load_checkpoint(path)
    if model_class is not None:
        check_model_class(checkpoint, model_class, path)
    return Path(path)


def saved_class_path(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the model that wrote ``checkpoint``, where it says (``lightning-meta`` checkpoints do)."""
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    return class_path if isinstance(class_path, str) else None


def check_model_class(checkpoint: dict[str, Any], model_class: type, path: str | Path) -> None:
    """Refuse a checkpoint whose model is not ``model_class`` (or a subclass of it), in one line naming both.

    Raises:
        WrongModelCheckpoint: the checkpoint names another model class.
    """
    saved = saved_class_path(checkpoint)
    if saved is None:
        return
    module, _, name = saved.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        found = None
    if isinstance(found, type) and issubclass(found, model_class):
        return
    raise WrongModelCheckpoint(
        f"{path} is a checkpoint of {name} ({saved}), not of {model_class.__name__}: load it with "
        f"{name}.load_from_checkpoint, or pass a checkpoint of a {model_class.__name__}"
    )


class ChecksCheckpointClass:
    """A LightningModule mixin (before ``LightningModule`` in the bases): ``load_from_checkpoint`` of a local file
    reads it safely and checks its model class first (:func:`readable_checkpoint`), so that a checkpoint of another
    model is one line naming both classes."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            readable_checkpoint(checkpoint_path, cls)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


def _damage(path: Path) -> str:
    """What is wrong with a file that torch.load could not read."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK"):  # a zip archive, as torch.save writes, cut short or overwritten
        return f"it is truncated or damaged ({size} bytes, not a complete zip archive as torch.save writes)"
    if size == 0:
        return "it is empty"
    return f"it is not a file that torch.save wrote ({size} bytes)"
