"""One-line errors for the ``lightning-meta`` command: a bad value names its key, the value and the rule.

The library checks its arguments where they are used (``TaskDataModule(inner_steps=0)`` raises
``ValueError: TaskDataModule: inner_steps must be >= 1, got 0``); jsonargparse then buries that message at the end
of a long traceback of its own. :func:`run_reporting_errors` turns such an error into one line on standard error,

    lightning-meta: --data.inner_steps=0: TaskDataModule: inner_steps must be >= 1, got 0

and exit status 1. It does so for the errors the library raises about what it was given: ``ValueError`` (range
checks, unreadable checkpoints), ``TypeError`` (a missing protocol method), ``FileNotFoundError`` and ``ImportError``
(missing data or extras) and Lightning's ``MisconfigurationException``, raised by ``lightning_meta`` code, and for
runs that went wrong: :class:`~lightning_meta.engine.MetaTrainingDiverged` and
:class:`~lightning_meta.atomic_files.DiskFull` (printed as they are). The key is found by walking the traceback to
the object whose method raised (the data module, a callback, a task family, ...), finding the config entry that
built it, and picking the argument the message names (``name=value`` first, then the first name it mentions); the
key is written as the user wrote it on the command line (``--model.init_args.lr`` or ``--model.lr``).

An error that torch, PIL or another library raises while the config's objects are built, set up or loaded (in
their ``__init__``, ``setup``, ``prepare_data``, ``configure_optimizers`` or ``configure_model``: a negative
learning rate reaching ``torch.optim``, an image file PIL cannot read) gets one line too, naming the config entry
and, when the message holds a value of exactly one of its arguments, that argument:

    lightning-meta: --model.init_args.lr=-1: ValueError: Invalid learning rate: -1.0 (--debug shows the traceback)

Anything else is a bug and keeps its full traceback, as does everything with ``--debug`` on the command line or
``LIGHTNING_META_DEBUG=1`` in the environment. Unknown keys and values of the wrong type are parse
errors, one line too (exit status 2, :mod:`lightning_meta.cli_parse_errors`).

Examples:
    >>> from lightning_meta.data import TaskDataModule
    >>> def bad() -> None:
    ...     TaskDataModule(inner_steps=0)
    >>> run_reporting_errors(bad, [])  # prints "lightning-meta: TaskDataModule: inner_steps must be >= 1, got 0"
    1
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta.atomic_files import DiskFull
from lightning_meta.engine import MetaTrainingDiverged

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIGHTNING_META_DEBUG"
REPORTED = (ValueError, TypeError, FileNotFoundError, ImportError, MisconfigurationException)
WENT_WRONG = (MetaTrainingDiverged, DiskFull)
"""Errors about a run that went wrong, not one bad value: printed as they are."""
BUILDING = frozenset({"__init__", "setup", "prepare_data", "configure_optimizers", "configure_model"})
"""The methods in which an object of the config is built, set up or loaded."""
FOREIGN = (ValueError, TypeError, RuntimeError, OSError, IndexError, KeyError)
"""The errors of other libraries (torch, PIL) that get one line when they come from :data:`BUILDING`."""


def run_reporting_errors(run: Callable[[], object], args: list[str]) -> int:
    """Call ``run``; the exit status: 0, or 1 after printing the one line of an error about the user's input (see
    the module docstring). ``--debug`` in ``args`` (the command line, e.g. ``sys.argv``: it is removed from it in
    place and passed on, to processes the run starts too, as ``LIGHTNING_META_DEBUG=1``) or
    ``LIGHTNING_META_DEBUG=1`` re-raises instead."""
    if DEBUG_FLAG in args:
        args.remove(DEBUG_FLAG)
        os.environ[DEBUG_ENV] = "1"
    try:
        run()
    except Exception as error:
        line = None if os.environ.get(DEBUG_ENV, "0") not in ("", "0") else one_line(error, args)
        if line is None:
            raise
        print(f"lightning-meta: {line}", file=sys.stderr)
        return 1
    return 0


def one_line(error: BaseException, args: list[str] | None = None) -> str | None:
    """The line to print for ``error`` (without the ``lightning-meta:`` prefix), or ``None`` when it is not an error
    about the user's input; ``args``, the command line, gives the keys' spelling."""
    cause = _library_error(error)
    if cause is None:
        return _foreign_line(error, args or [])
    message = " ".join(str(cause).split())  # one line, whatever the message's own line breaks
    if isinstance(cause, WENT_WRONG):
        return message
    config = _config(error)
    found = None if config is None else _config_entry(cause, config)
    if found is None:
        return message
    return f"{_where(*found, args or [])}: {message}"


def _foreign_line(error: BaseException, args: list[str]) -> str | None:
    """One line for an error another library raised while the config's objects were built, set up or loaded (see
    the module docstring), or ``None``."""
    cause = next((e for e in reversed(list(_chain(error))) if isinstance(e, FOREIGN)), None)
    config = _config(error)
    if cause is None or config is None or _raised_by_library(cause):
        return None
    nodes = list(_class_nodes(config, []))
    frames = _frames(cause.__traceback__)
    if not any(f.f_code.co_name in BUILDING and _node_of(f.f_locals.get("self"), nodes) for f in frames):
        return None
    path, node = next(found for f in frames if (found := _node_of(f.f_locals.get("self"), nodes)))
    message = " ".join(f"{type(cause).__name__}: {cause}".split())
    where = _where(path, node, _argument_by_value(node, str(cause)), args)
    return f"{where}: {message} (--debug shows the traceback)"


def _where(path: list[str], node: Namespace, argument: str | None, args: list[str]) -> str:
    """``--key=value`` of the argument, or ``--key (Class)`` of the config entry when no argument is known."""
    if argument is None:
        return f"{flag_of(path, args)} ({_class_name(node)})"
    return f"{flag_of([*path, argument], args)}={_text(node['init_args'][argument])}"


def _node_of(owner: object, nodes: list[tuple[list[str], Namespace]]) -> tuple[list[str], Namespace] | None:
    """The config entry (path and node) that built ``owner``, if any."""
    if owner is None:
        return None
    return next(((path, node) for path, node in nodes if type(owner) is _import(node["class_path"])), None)


def _argument_by_value(node: Namespace, message: str) -> str | None:
    """The one numeric argument of ``node`` whose value the message holds (``-1`` in "Invalid learning rate:
    -1.0"), else ``None``."""
    numbers = {float(n) for n in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", message)}
    arguments = vars(node.get("init_args") or Namespace())
    found = [
        name for name, value in arguments.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) in numbers
    ]  # fmt: skip
    return found[0] if len(found) == 1 else None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, outermost first, as Python prints them
    (``raise ... from None`` ends the chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _frames(tb: TracebackType | None) -> list[Any]:
    """The frames of a traceback, innermost first."""
    return [frame for frame, _ in traceback.walk_tb(tb)][::-1]


def _raised_by_library(error: BaseException) -> bool:
    frames = _frames(error.__traceback__)
    return bool(frames) and frames[0].f_globals.get("__name__", "").startswith("lightning_meta.")


def _library_error(error: BaseException) -> BaseException | None:
    """The innermost error of the chain that the library raised about the user's input, if any."""
    went_wrong = [e for e in _chain(error) if isinstance(e, WENT_WRONG)]  # e.g. a full disk, then a log that failed
    if went_wrong:
        return went_wrong[-1]
    found = [e for e in _chain(error) if isinstance(e, REPORTED) and _raised_by_library(e)]
    return found[-1] if found else None


def _config(error: BaseException) -> Namespace | None:
    """The parsed config of the ``LightningCLI`` whose run raised ``error`` (its subcommand's part)."""
    for frame in _frames(error.__traceback__):
        cli = frame.f_locals.get("self")
        if isinstance(cli, LightningCLI) and hasattr(cli, "config"):
            subcommand = getattr(cli, "subcommand", None)
            return cli.config[subcommand] if subcommand else cli.config
    return None


def _config_entry(cause: BaseException, config: Namespace) -> tuple[list[str], Namespace, str | None] | None:
    """The config entry (its path and node) that built the object whose method raised ``cause``, and the first of
    its arguments that the message names (``None`` if it names none)."""
    nodes = list(_class_nodes(config, []))
    for frame in _frames(cause.__traceback__):
        found = _node_of(frame.f_locals.get("self"), nodes)
        if found is not None:
            return *found, _named_argument(found[1], str(cause))
    return None


def _named_argument(node: Namespace, message: str) -> str | None:
    """The argument of ``node`` that ``message`` names: the first written ``name=``, else the first mentioned."""
    arguments = list(vars(node.get("init_args") or Namespace()))
    for pattern in (r"\b{}=", r"\b{}\b"):
        named = [(m.start(), a) for a in arguments if (m := re.search(pattern.format(re.escape(a)), message))]
        if named:
            return min(named)[1]
    return None


def _class_nodes(value: Any, path: list[str]) -> Iterator[tuple[list[str], Namespace]]:
    """Every ``{class_path, init_args}`` entry of the config, with its path."""
    if isinstance(value, Namespace):
        if isinstance(value.get("class_path"), str):
            yield path, value
        for key, item in vars(value).items():
            yield from _class_nodes(item, path if key == "init_args" else [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _class_nodes(item, [*path[:-1], f"{path[-1]}[{index}]"] if path else [f"[{index}]"])


def _import(class_path: str) -> object:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def flag_of(path: list[str], args: list[str]) -> str:
    """The command-line flag of a config path as the user wrote it in ``args`` (``--model.init_args.lr`` or
    ``--model.lr``), else ``--model.lr``; or the path itself where it passes through a list
    (``trainer.callbacks[0].inner_steps``), which no flag addresses."""
    key = ".".join(path)
    if "[" in key:
        return key
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag[2:].replace(".init_args.", ".") == key:
            return flag
    return f"--{key}"


def _class_name(node: Namespace) -> str:
    return str(node["class_path"]).rpartition(".")[2]


def _text(value: Any) -> str:
    return str(value["class_path"]) if isinstance(value, Namespace) and "class_path" in value else str(value)
