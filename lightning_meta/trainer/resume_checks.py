"""Resuming from ``--ckpt_path``: the checkpoint's model must be the run's, and what the user configured wins.

Lightning's CLI reads the model's hyper-parameters from the checkpoint and lets them replace the run's config,
class included: ``--ckpt_path`` of a language model's checkpoint silently turns an Omniglot run into a language
model run, and ``--model.init_args.channels=16`` is silently replaced by the checkpoint's 64. ``lightning-meta``
checks instead:

- :func:`check_resumed_class`: a checkpoint of another model class is refused in one line naming both;
- :func:`keep_configured_values`: a model argument configured on the command line or in a config file (one that is
  not the class's default) and different from the checkpoint's keeps the configured value, and one line says so:
  resuming with a smaller inner learning rate after a divergence works as the advice says;
- :func:`check_weights_fit`: when a kept value changes the shape of the weights (``channels``), the run stops in one
  line naming the tensor, both shapes and the argument, before Lightning fails deep inside ``load_state_dict``.

Examples:
    >>> from jsonargparse import Namespace
    >>> model = "lightning_meta.models.ConvClassifier"
    >>> written = Namespace(class_path=model, init_args=Namespace(lr=0.05, channels=64))
    >>> merged = Namespace(class_path=model, init_args=Namespace(lr=0.1, channels=8))
    >>> keep_configured_values(written, merged)  # lr=0.05 was configured (the default is 0.1); channels=64 is default
    [('lr', 0.05, 0.1)]
    >>> merged.init_args.lr, merged.init_args.channels
    (0.05, 8)
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from lightning_meta.checkpoint_files import WrongModelCheckpoint, saved_class_path


def check_resumed_class(checkpoint: dict[str, Any], model: Namespace, path: str | Path) -> None:
    """Refuse ``checkpoint`` when it names a model class other than the config's ``model`` entry's.

    Raises:
        WrongModelCheckpoint: naming both classes.
    """
    saved, configured = saved_class_path(checkpoint), model.get("class_path")
    if saved is None or not isinstance(configured, str) or saved == configured:
        return
    raise WrongModelCheckpoint(
        f"{path} is a checkpoint of {saved.rpartition('.')[2]} ({saved}), but this run's model is "
        f"{configured.rpartition('.')[2]} ({configured}): resume it with the config that wrote it, or start this run "
        "without --ckpt_path"
    )


def class_defaults(class_path: str) -> dict[str, Any]:
    """The defaults of the ``__init__`` arguments of the class at ``class_path`` and of its bases (a subclass's
    ``**kwargs`` often pass on to its base).

    Examples:
        >>> class_defaults("lightning_meta.models.MultiHeadClassifier")["channels"]  # ConvClassifier's
        64
    """
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is not None and inspect.isfunction(init):
            for parameter in inspect.signature(init).parameters.values():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[parameter.name] = parameter.default
    return defaults


def keep_configured_values(written: Namespace, merged: Namespace) -> list[tuple[str, Any, Any]]:
    """Put back into ``merged`` (the model's config after Lightning applied the checkpoint's hyper-parameters) every
    argument of ``written`` (the config as parsed) that differs from the checkpoint's and from the class's default;
    returns them as ``(name, configured, checkpoint's)``."""
    configured = written.get("init_args") or Namespace()
    saved = merged.get("init_args") or Namespace()
    defaults = class_defaults(str(written["class_path"]))
    kept = []
    for name, value in vars(configured).items():
        if name in saved and saved[name] != value and (name not in defaults or defaults[name] != value):
            kept.append((name, value, saved[name]))
            saved[name] = value
    return kept


def check_weights_fit(checkpoint: dict[str, Any], model: torch.nn.Module, path: str | Path, kept: str) -> None:
    """Refuse a checkpoint whose weights have other shapes than ``model``'s (tensors both have); ``kept`` says which
    configured values differ from the checkpoint's (for the message).

    Raises:
        WrongModelCheckpoint: naming the first tensor that differs and both shapes.
    """
    mine = model.state_dict()
    for name, tensor in checkpoint.get("state_dict", {}).items():
        if name in mine and tuple(mine[name].shape) != tuple(tensor.shape):
            why = f"configured {kept}" if kept else "its model was configured otherwise"
            raise WrongModelCheckpoint(
                f"{path} does not fit this run's model: {name} is {list(tensor.shape)} there and "
                f"{list(mine[name].shape)} here ({why}): resume with the checkpoint's values, or start without "
                "--ckpt_path"
            )
