"""One-line errors for the ``lightning-meta`` command: a bad value names its key, the value and the rule.

The library checks its arguments where they are used (``TaskDataModule(inner_steps=0)`` raises
``ValueError: TaskDataModule: inner_steps must be >= 1, got 0``); jsonargparse then buries that message at the end
of a long traceback of its own. :func:`run_reporting_errors` turns such an error into one line on standard error,

    lightning-meta: --data.inner_steps=0: TaskDataModule: inner_steps must be >= 1, got 0

and exit status 1. It does so for the errors the library raises about what it was given: ``ValueError`` (range
checks, unreadable checkpoints), ``TypeError`` (a missing protocol method), ``FileNotFoundError`` and ``ImportError``
(missing data or extras) and Lightning's ``MisconfigurationException``, raised by ``lightning_meta`` code, and
:class:`~lightning_meta.engine.MetaTrainingDiverged`. The key is found by walking the traceback to the object
whose method raised (the data module, a callback, a task family, ...), finding the config entry that built it, and
picking the first of its arguments that the message names. Anything else is a bug and keeps its full traceback, as
does everything with ``--debug`` on the command line or ``LIGHTNING_META_DEBUG=1`` in the environment. Unknown keys
and values of the wrong type are parse errors, one line too (exit status 2, :mod:`lightning_meta.cli_parse_errors`).

Examples:
    >>> from lightning_meta.tasks import TaskDataModule
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

from lightning_meta.engine import MetaTrainingDiverged

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIGHTNING_META_DEBUG"
REPORTED = (ValueError, TypeError, FileNotFoundError, ImportError, MisconfigurationException)


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
        line = None if os.environ.get(DEBUG_ENV, "0") not in ("", "0") else one_line(error)
        if line is None:
            raise
        print(f"lightning-meta: {line}", file=sys.stderr)
        return 1
    return 0


def one_line(error: BaseException) -> str | None:
    """The line to print for ``error`` (without the ``lightning-meta:`` prefix), or ``None`` when it is not an error
    about the user's input."""
    cause = _library_error(error)
    if cause is None:
        return None
    message = " ".join(str(cause).split())  # one line, whatever the message's own line breaks
    if isinstance(cause, MetaTrainingDiverged):  # a run that went wrong, not one bad value
        return message
    config = _config(error)
    found = None if config is None else _config_entry(cause, config)
    if found is None:
        return message
    path, node, argument = found
    if argument is None:
        return f"{_key(path)} ({_class_name(node)}): {message}"
    return f"{_key([*path, argument])}={_text(node['init_args'][argument])}: {message}"


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
    if isinstance(error, MetaTrainingDiverged):
        return error
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
        owner = frame.f_locals.get("self")
        for path, node in nodes:
            if owner is not None and type(owner) is _import(node["class_path"]):
                arguments = list(vars(node.get("init_args") or Namespace()))
                named = [(m.start(), a) for a in arguments if (m := re.search(rf"\b{re.escape(a)}\b", str(cause)))]
                return path, node, min(named)[1] if named else None
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


def _key(path: list[str]) -> str:
    """The command-line flag of a config path (``--data.inner_steps``), or the path itself where it passes through a
    list (``trainer.callbacks[0].inner_steps``), which no flag addresses."""
    key = ".".join(path)
    return key if "[" in key else f"--{key}"


def _class_name(node: Namespace) -> str:
    return str(node["class_path"]).rpartition(".")[2]


def _text(value: Any) -> str:
    return str(value["class_path"]) if isinstance(value, Namespace) and "class_path" in value else str(value)
