"""The command line, and only the command line: shared flags, value types, and flags -> typed options.

Each script builds its own ``argparse`` parser and calls :func:`add_common_args`, so the flags are
named, documented and validated once. This is the only module that reads an ``argparse.Namespace``:
everything below it takes typed options (:class:`mechinterp.source.SourceOptions`, ...), so a notebook
can call the package without building a fake ``args``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mechinterp import constants
from mechinterp.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EnvironmentProblem, Interrupted, UserError
from mechinterp.io import OutputFolder
from mechinterp.loading import DEFAULT_DTYPE, DTYPES
from mechinterp.source import SourceOptions, demo_prompts_dir


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


def add_common_args(parser: argparse.ArgumentParser, out_help: str = "folder for figures and tables",
                    model_default: str | None = None) -> None:
    """Add the model/SAE/output/etiquette flags shared by every chapter.

    ``model_default``: the ``--model`` default for a script with no SAE to take the model from (Chapter 5
    trains one); elsewhere the model defaults to the one the SAE was trained on.
    """
    group = parser.add_argument_group("model and SAE")
    group.add_argument(
        "--model",
        default=model_default,
        help="TransformerLens model name, or a local Hugging Face model folder (default: "
        + (f"{model_default})" if model_default else "the model the SAE was trained on, as its metadata "
           f"says: {constants.DEFAULT_MODEL} for the default SAE)"),
    )
    group.add_argument(
        "--sae-release",
        default=constants.DEFAULT_SAE_RELEASE,
        help="SAELens pretrained release (default: %(default)s)",
    )
    group.add_argument(
        "--sae-id", default=constants.DEFAULT_SAE_ID, help="SAE id within the release (default: %(default)s)"
    )
    group.add_argument(
        "--sae-path",
        type=Path,
        default=None,
        metavar="DIR",
        help="an SAE saved with SAELens' save_model (cfg.json + sae_weights.safetensors); "
        "used instead of --sae-release/--sae-id",
    )
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or mps (default: cuda when available, else cpu; mps only on request)",
    )
    group.add_argument(
        "--dtype",
        choices=DTYPES,
        default=DEFAULT_DTYPE,
        help="what the model and the SAE compute in: float32 agrees with SAELens to float rounding; "
        "bfloat16 is faster on CPUs and GPUs with bf16 instructions (much slower on CPUs without) and "
        "moves activations by up to a few percent; float16 only on a CUDA GPU. Statistics and outputs "
        "are float32 either way; see docs/performance.md (default: %(default)s)",
    )
    group.add_argument(
        "--demo",
        action="store_true",
        help="run on the synthetic toy world (a tiny GPT-2-shaped model and SAE with planted "
        "features), built locally in seconds; needs no network",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=constants.DEFAULT_OUT_DIR,
        metavar="DIR",
        help=f"{out_help} (default: Images/ beside the script)",
    )
    out.add_argument(
        "--tag", default=None, help="write this run's outputs under OUT/TAG/ so earlier results are kept"
    )
    out.add_argument("--quiet", action="store_true", help="print only the results, no progress")
    out.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


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


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The model/SAE flags of :func:`add_common_args` as typed options."""
    return SourceOptions(
        model=args.model, sae_release=args.sae_release, sae_id=args.sae_id, sae_path=args.sae_path,
        device=args.device, demo=args.demo, dtype=getattr(args, "dtype", DEFAULT_DTYPE),
    )


def prompt_folder(args: argparse.Namespace) -> Path:
    """``--prompts``, else the demo world's prompts with ``--demo``, else prompts/ beside the scripts."""
    if args.prompts is not None:
        return Path(args.prompts)
    if args.demo:
        return demo_prompts_dir()
    return constants.DEFAULT_PROMPTS_DIR


def output_folder(args: argparse.Namespace) -> OutputFolder:
    """The folder this run writes to (``--out``, or ``--out/--tag``), created and checked writable.

    Files written through it are renamed into place only when the run succeeds (see mechinterp.io).
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


def make_logger(args: argparse.Namespace):
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
