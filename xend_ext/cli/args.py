"""How command modules declare their arguments, and the helpers every command shares.

Each module has ``COMMANDS = {name: (function, [arguments])}``; ``main`` turns that into argparse
sub-commands, so a command is one small function plus a list, and ``xm CMD --help`` is generated
from the same place as the code.
"""

from __future__ import annotations

import sys
from typing import Any

from .connection import CliError

MIB = 1 << 20
Argument = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Argument:
    """One ``add_argument`` call, written where the command is."""
    return flags, options


class Exclusive(list):
    """Arguments of which at most one may be given (argparse's mutually exclusive group)."""


class UsageError(CliError):
    """A command line argparse could not reject by itself; reported like argparse does (exit 2)."""


MODES = ("dynamic", "static", "perm")


def mode_arguments() -> Exclusive:
    """``--dynamic|--static|--perm`` (API.md §8); None when none is given, so a command can pick."""
    return Exclusive([
        arg("--dynamic", dest="mode", action="store_const", const="dynamic",
            help="change the running domain only; the next start reverts (default for a running domain)"),
        arg("--static", dest="mode", action="store_const", const="static",
            help="change the stored definition only; applies at the next start (default for a halted domain)"),
        arg("--perm", dest="mode", action="store_const", const="perm",
            help="change both the running domain and the stored definition"),
    ])


def note(text: str) -> None:
    """Something the user should know that is not the command's output (so scripts can ignore it)."""
    print(text, file=sys.stderr)


_ON_SUCCESS: list[str] = []


def note_on_success(text: str) -> None:
    """A note that is true only if the command succeeds ("the change is stored..."): said after it."""
    _ON_SUCCESS.append(text)


def flush_notes(succeeded: bool) -> None:
    """Say the notes kept for success (when it succeeded), and forget them."""
    if succeeded:
        for text in _ON_SUCCESS:
            note(text)
    _ON_SUCCESS.clear()
