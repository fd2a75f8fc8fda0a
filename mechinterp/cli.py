"""The command line, and only the command line: shared flags, value types, and flags -> typed options.

Each option is defined once, as a dataclass field (:func:`mechinterp.core.options.option`):
:func:`add_options` makes the flags from the fields and :func:`options_from` turns the parsed flags back
into the dataclass. Each script builds its own ``argparse`` parser from its chapter's options and the
shared groups (:func:`add_common_args`: model/SAE and output). This is the only module that reads an
``argparse.Namespace``: everything below it takes typed options
(:class:`mechinterp.core.source.SourceOptions`, ...), so a notebook can call the package without
building a fake ``args``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mechinterp.core import constants
from mechinterp.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EnvironmentProblem, Interrupted, UserError
from mechinterp.core.io import OutputFolder
from mechinterp.core.options import (  # noqa: F401  (value types: the scripts take them from here)
    UNSET,
    dest_of,
    finite_float,
    flag_of,
    fraction,
    non_negative_int,
    option,
    positive_float,
    positive_int,
)
from mechinterp.core.progress import Log
from mechinterp.core.source import SourceOptions, resolve_prompt_folder
from mechinterp.core.tables import WIDTH

T = TypeVar("T")


class HelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" after an option's help, unless the help already says its default or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, plus a "did you mean" for mistyped option names (Python 3.11's argparse has none)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            known = [opt for action in self._actions for opt in action.option_strings]
            hints = []
            for word in match.group(1).split():
                if word.startswith("-"):
                    close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
                    if close:
                        hints.append(close[0])
            if hints:
                message += f" (did you mean {' / '.join(hints)}?)"
        super().error(message)


def add_options(parser: argparse.ArgumentParser, cls: type, title: str | None = None, *,
                defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None,
                only: Sequence[str] | None = None,
                into: argparse._ArgumentGroup | None = None) -> argparse._ArgumentGroup:
    """Add one flag per :func:`~mechinterp.core.options.option` field of the dataclass ``cls``.

    The field is the single definition: its name gives the flag (``top_k`` -> ``--top-k``) and the
    ``args`` attribute, its default and help become the flag's. ``defaults``/``helps`` change a field's
    default and help for one script (Chapter 5's ``--model``); ``only`` keeps just these fields.
    The flags go into the ``--help`` section ``title``, or the one a field names (its ``group``); a
    section that already exists is added to, so options of two dataclasses can share one. ``into`` adds
    them to a group the script already has instead (e.g. a mutually exclusive group).
    Returns the group, so a script can add a flag of its own beside them.
    """
    group = into if into is not None else _section(parser, title)
    for field in dataclasses.fields(cls):
        flag = flag_of(field)
        if flag is None or (only is not None and field.name not in only):
            continue
        if flag.cli_default is not UNSET:
            default = flag.cli_default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None if field.default is dataclasses.MISSING else field.default
        default = (defaults or {}).get(field.name, default)
        if flag.invert:  # a flag that switches the field off stores its own True (--no-cache: args.no_cache)
            default = False
        kwargs: dict[str, Any] = {"dest": dest_of(field), "default": default,
                                  "help": (helps or {}).get(field.name, flag.help)}
        action = flag.action or ("store_true" if default is False and flag.type is None else None)
        if action:
            kwargs["action"] = action
        for key in ("type", "choices", "metavar", "nargs"):
            if getattr(flag, key) is not None:
                kwargs[key] = getattr(flag, key)
        section = _section(parser, flag.group) if flag.group else group
        section.add_argument(flag.flag or "--" + field.name.replace("_", "-"), **kwargs)
    return group


def _section(parser: argparse.ArgumentParser, title: str | None) -> argparse._ArgumentGroup:
    """The ``--help`` section called ``title``: the parser's own if it has one by that name, else a new one."""
    for group in parser._action_groups:
        if title is not None and group.title == title:
            return group
    return parser.add_argument_group(title)


def options_from(args: argparse.Namespace, cls: type[T], **values: Any) -> T:
    """The dataclass ``cls`` filled from the parsed flags of its fields (``values`` for fields without a flag)."""
    for field in dataclasses.fields(cls):
        flag = flag_of(field)
        if flag is not None and hasattr(args, dest_of(field)) and field.name not in values:
            value = getattr(args, dest_of(field))
            values[field.name] = not value if flag.invert else value
    return cls(**values)


@dataclasses.dataclass
class OutputOptions:
    """Where a run writes, and how much it says (the "output" flags of every chapter)."""

    out: Path = option(constants.DEFAULT_OUT_DIR, "folder for figures and tables (default: Images/ beside the script)",
                       type=Path, metavar="DIR")
    tag: str | None = option(None, "write this run's outputs under OUT/TAG/ so earlier results are kept")
    quiet: bool = option(False, "print only the results, no progress")
    verbose: bool = option(False, "print the full report in the terminal, not only its summary (the full report "
                                  "is always saved as <script>_report.txt in the output folder)")
    debug: bool = option(False, "show full tracebacks on errors")


def add_common_args(parser: argparse.ArgumentParser, out_help: str = "folder for figures and tables",
                    model_default: str | None = None, summary: bool = True) -> None:
    """Add the model/SAE and output flags every chapter shares (:class:`SourceOptions`, :class:`OutputOptions`).

    ``model_default``: the ``--model`` default for a script with no SAE to take the model from (Chapter 5
    trains one); elsewhere the model defaults to the one the SAE was trained on. ``summary``: whether the
    chapter prints a summary by default and its full report with ``--verbose``.
    """
    model_help = f"TransformerLens model name, or a local Hugging Face model folder (default: {model_default})"
    add_options(parser, SourceOptions, "model and SAE", defaults={"model": model_default},
                helps={"model": model_help} if model_default else None)
    helps = {"out": f"{out_help} (default: Images/ beside the script)"}
    if not summary:  # a chapter whose whole report fits a terminal prints it all
        helps["verbose"] = "accepted for symmetry with the other chapters: this one always prints everything"
    add_options(parser, OutputOptions, "output", helps=helps)


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The model/SAE flags of :func:`add_common_args` as typed options."""
    return options_from(args, SourceOptions)


def prompt_folder(args: argparse.Namespace) -> Path:
    """``--prompts``, else the demo world's prompts with ``--demo``, else prompts/ beside the scripts."""
    return resolve_prompt_folder(args.prompts, args.demo)


def output_folder(args: argparse.Namespace) -> OutputFolder:
    """The folder this run writes to (``--out``, or ``--out/--tag``), created and checked writable.

    Files written through it are renamed into place only when the run succeeds (see mechinterp.core.io).
    """
    path = Path(args.out) / args.tag if args.tag else Path(args.out)
    if args.tag and (os.sep in args.tag or args.tag in ("", ".", "..")):
        raise UserError(f"--tag {args.tag!r} must be a plain name, without slashes")
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise UserError(f"--out {args.out} cannot be used: {part} is a file, not a folder; pick a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EnvironmentProblem(f"cannot create the output folder {path} ({err.strerror}); pick another --out") from err
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise EnvironmentProblem(f"the output folder {path} is not writable ({err.strerror}); pick another --out") from err
    return OutputFolder(path)


def print_report(out: OutputFolder, script: str, args: argparse.Namespace, full: Sequence[str],
                 brief: Sequence[str], full_shown: Sequence[str] | None = None) -> Path:
    """Print a run's summary (its full report with ``--verbose``) and save the full report beside its results.

    A terminal holds about 60 lines: the summary gives each result in a line or a short table, and says
    where the rest is. The full report is saved as plain text, so it reads the same in an editor;
    ``full_shown`` is the full report as the terminal shows it, where that differs (colour for marks).
    """
    path = out.write_text(f"{Path(script).stem}_report.txt", strip_ansi("\n".join(full)).strip("\n") + "\n")
    if getattr(args, "verbose", False):
        print("\n".join(full if full_shown is None else full_shown))
    else:
        print("\n".join(brief))
        print("\n" + textwrap.fill(f"The full report (every table, and why each result is what it is): "
                                   f"{out.path / path.name} (or rerun with --verbose)", WIDTH, subsequent_indent="  "))
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _ANSI.sub("", text)


def make_logger(args: argparse.Namespace) -> Log:
    """Progress messages go to stderr (results go to stdout), and not at all with --quiet."""
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(msg, file=sys.stderr)


def run_cli(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a script's body, turning expected failures into one-line messages and exit codes.

    A :class:`UserError` becomes ``error: <message>`` and its exit status (2, or 1 for problems with the
    machine); Ctrl-C exits 130; anything else is a bug, reported in one line unless ``--debug``.
    """
    debug = bool(getattr(args, "debug", False))
    try:
        return body(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Interrupted as stop:
        if debug:
            raise
        print(f"interrupted: {stop.note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if debug:
            raise
        # Only a script with the activation cache (it has --no-cache) keeps the prompts it encoded.
        cached = hasattr(args, "no_cache") and not args.no_cache
        print(
            "interrupted: stopped cleanly. Earlier results in the output folder are untouched"
            + (", and the prompts already encoded are cached, so a rerun continues where this one stopped."
               if cached else "."),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug, not a user mistake: say so, and how to see the details
        if debug:
            raise
        print(
            f"error: unexpected {type(err).__name__}: {err}\n"
            "This is probably a bug. Rerun with --debug to see the traceback, and please report it.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
