"""Each option is written once: a dataclass field that carries its default, its help and its flag.

A chapter's options are a dataclass (``SourceOptions``, ``MeaningOptions``, ...). A field made with
:func:`option` holds everything the command line needs, so ``mechinterp.cli`` builds the flags from
the dataclass and turns the parsed flags back into it; a notebook builds the same dataclass directly.
Nothing is copied into an adapter::

    @dataclass
    class Example:
        top_k: int = option(20, "how many features to show", type=positive_int)

gives ``--top-k`` (type checked, "(default: 20)" in ``--help``) and ``Example(top_k=...)``.

The value types below (:func:`positive_int`, :func:`fraction`, ...) check a flag's text and say what
is wrong in one line; they raise ``argparse.ArgumentTypeError``, which argparse turns into its usual
``error:`` message and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

CLI_KEY = "mechinterp.cli"
UNSET = object()  # "no flag default of its own" (None is a real default)


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one dataclass field appears on the command line (kept in the field's metadata)."""

    help: str
    flag: str | None = None  # default: --field-name
    type: Callable[[str], Any] | None = None
    choices: tuple | None = None
    metavar: str | None = None
    nargs: str | int | None = None
    action: str | None = None  # default: store_true for a bool field that defaults to False
    group: str | None = None  # the --help section; default: the dataclass's own section
    cli_default: Any = UNSET  # the flag's default when it differs from the field's
    # The flag switches a field that defaults to True off: ``use_cache`` with ``flag="--no-cache"`` stores
    # the flag's own value under its own name (``no_cache``, False unless given) and the field gets the opposite.
    invert: bool = False


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           **flag: Any) -> Any:
    """A dataclass field with its command-line flag: ``default``, ``help``, and :class:`Flag`'s keywords."""
    metadata = {CLI_KEY: Flag(help=help, **flag)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> Flag | None:
    """The field's :class:`Flag`, or None for a field that is not on the command line."""
    return field.metadata.get(CLI_KEY)


def dest_of(field: dataclasses.Field) -> str:
    """The ``args`` attribute of the field's flag: the field's name, or for an inverted flag the flag's own."""
    flag = flag_of(field)
    if flag is not None and flag.invert:
        return (flag.flag or "").lstrip("-").replace("-", "_")
    return field.name


def _whole(text: str, low: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _whole(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _whole(text, 0, "0 or more")


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def finite_float(text: str) -> float:
    """argparse type: any finite number (nan and inf are refused: they would turn every result into nan)."""
    value = _number(text, "a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type for a number strictly between 0 and 1."""
    value = _number(text, "a number between 0 and 1")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value
