"""Parse errors of ``lightning-meta`` in one line: an unknown key names the closest valid one; usage only with --help.

jsonargparse answers a mistyped key with the whole usage (about 50 lines) and a nested error that lists each
candidate class; :class:`MetaArgumentParser` prints one line on standard error instead and exits with status 2,

    lightning-meta: --data.inner_stepz=5: no such key; did you mean --data.inner_steps? (lightning-meta fit --help
    lists every key)

Values of the wrong type get one line too (``--data.inner_steps=abc: Expected a <class 'int'>. Got value: abc``);
any other parse error keeps jsonargparse's message, without the usage. ``--debug`` (``LIGHTNING_META_DEBUG=1``) or
jsonargparse's own ``JSONARGPARSE_DEBUG`` brings back jsonargparse's report.

Examples:
    >>> from lightning.pytorch.callbacks import ModelCheckpoint
    >>> message = '''Parser key "data":
    ...   Does not validate against any of the Union subtypes
    ...   Errors:
    ...     - Problem with given class_path 'lightning_meta.data.TaskDataModule':
    ...         Option 'inner_stepz' is not accepted
    ...   Given value: NestedArg(key='inner_stepz', val='5')'''
    >>> parse_error_line(message, valid_keys=[])
    '--data.inner_stepz=5: no such key; did you mean --data.inner_steps?'
    >>> parse_error_line("unrecognized arguments: --trainer.max_stepz=3", valid_keys=["--trainer.max_steps"])
    '--trainer.max_stepz=3: no such key; did you mean --trainer.max_steps?'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterable
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

DEBUG_ENV = "LIGHTNING_META_DEBUG"  # the same switch as lightning_meta.cli_errors'

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.+)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_NOT_ACCEPTED = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted")
_WRONG_TYPE = re.compile(r'Problem with given class_path [^\n]*\n\s*Parser key "([^"]+)":\s*\n\s*(\S[^\n]*)')
_GIVEN = re.compile(r"Given value: NestedArg\(key='[^']*', val='([^']*)'\)")


class MetaArgumentParser(LightningArgumentParser):
    """Lightning's argument parser whose parse errors are one line (see the module docstring)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        debug = os.environ.get(DEBUG_ENV, "0") not in ("", "0") or os.environ.get("JSONARGPARSE_DEBUG")
        if not self.exit_on_error or debug:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [option for action in parser._actions for option in action.option_strings]
        help_command = " ".join(["lightning-meta", *parser.prog.replace(" [options]", "").split()[1:], "--help"])
        sys.stderr.write(f"lightning-meta: {parse_error_line(message, keys)} ({help_command} lists every key)\n")
        sys.exit(2)


def parse_error_line(message: str, valid_keys: Iterable[str]) -> str:
    """One line for jsonargparse's ``message``: an unknown key with the closest of ``valid_keys`` (the parser's own
    flags) or of the arguments of the class the key belongs to, a value of the wrong type with its key, or else
    the message itself on one line."""
    if unrecognized := _UNRECOGNIZED.match(message):
        valid = list(valid_keys)
        return "; ".join(_unknown(word, difflib.get_close_matches(word.split("=")[0], valid, n=1))
                         for word in unrecognized.group(1).split() if word.startswith("-"))  # fmt: skip
    parent = _PARSER_KEY.match(message)
    given = _GIVEN.search(message)
    value = f"={given.group(1)}" if given else ""
    if parent and (unknown := _NOT_ACCEPTED.findall(message)):
        option = unknown[0][1]
        arguments = [name for class_path, _ in unknown for name in _arguments(class_path)]
        close = difflib.get_close_matches(option, list(dict.fromkeys(arguments)), n=1)
        return _unknown(f"--{parent.group(1)}.{option}{value}", [f"--{parent.group(1)}.{name}" for name in close])
    if parent and (wrong := _WRONG_TYPE.findall(message)):
        key, problem = wrong[0]
        return f"--{parent.group(1)}.{key}{value}: {problem.strip()}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(dict.fromkeys(lines))


def _unknown(argument: str, close: list[str]) -> str:
    return f"{argument}: no such key" + (f"; did you mean {close[0]}?" if close else "")


def _arguments(class_path: str) -> list[str]:
    """The ``__init__`` arguments of a class named by its import path (those of its bases too where it passes
    ``**kwargs`` on); none when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names
