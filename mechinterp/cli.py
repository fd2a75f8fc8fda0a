"""Options every chapter script shares, and turning them into a loaded model + SAE.

Each script builds its own ``argparse`` parser and calls :func:`add_common_args`, so the flags are
named, documented and validated once.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mechinterp import constants
from mechinterp.errors import EnvironmentProblem, UserError
from mechinterp.io import begin_outputs
from mechinterp.loading import Loaded, folder_label, go_offline_if_hub_unreachable, load_model, load_sae, pick_device


class ArgumentParser(argparse.ArgumentParser):
    """argparse, plus a "did you mean" for mistyped option names (Python 3.11's argparse has none)."""

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


def add_common_args(parser: argparse.ArgumentParser, out_help: str = "folder for figures and tables") -> None:
    """Add the model/SAE/output/etiquette flags shared by every chapter."""
    group = parser.add_argument_group("model and SAE")
    group.add_argument(
        "--model",
        default=constants.DEFAULT_MODEL,
        help="TransformerLens model name, or a local Hugging Face model folder (default: %(default)s)",
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


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


def prompt_folder(args: argparse.Namespace) -> Path:
    """``--prompts``, else the demo world's prompts with ``--demo``, else prompts/ beside the scripts."""
    if args.prompts is not None:
        return Path(args.prompts)
    if args.demo:
        from mechinterp.toyworld import ensure_demo_world

        return ensure_demo_world(constants.demo_dir()).prompts_dir
    return constants.DEFAULT_PROMPTS_DIR


def out_dir(args: argparse.Namespace) -> Path:
    """The folder this run writes to (``--out``, or ``--out/--tag``), created and checked writable.

    Files written there are renamed into place only when the run succeeds (see mechinterp.io).
    """
    path = Path(args.out) / args.tag if args.tag else Path(args.out)
    if args.tag and (os.sep in args.tag or args.tag in ("", ".", "..")):
        raise UserError(f"--tag {args.tag!r} must be a plain name, without slashes")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EnvironmentProblem(f"cannot create the output folder {path} ({err.strerror}); pick another --out") from err
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise EnvironmentProblem(f"the output folder {path} is not writable ({err.strerror}); pick another --out") from err
    begin_outputs(path)
    return path


@dataclass
class Source:
    """Where the model and SAE come from, resolved from the flags (nothing is loaded yet)."""

    model: str
    sae_release: str
    sae_id: str
    sae_path: Path | None
    is_demo: bool
    model_label: str
    sae_label: str | None = None

    def cache_identity(self) -> dict[str, str]:
        """What determines the features of a text, for the activation cache's key."""
        if self.sae_path is not None:
            weights = self.sae_path / "sae_weights.safetensors"
            stat = weights.stat() if weights.exists() else None
            sae = f"path:{self.sae_path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        else:
            sae = f"release:{self.sae_release}/{self.sae_id}"
        model = self.model
        if Path(model).is_dir():
            config = Path(model) / "config.json"
            model = f"dir:{Path(model).resolve()}:{config.stat().st_mtime_ns if config.exists() else 0}"
        return {"model": model, "sae": sae}


def resolve_source(args: argparse.Namespace) -> Source:
    """Apply ``--demo`` (building the toy world if needed) and validate the SAE flags."""
    if args.sae_path is not None and not Path(args.sae_path).is_dir():
        raise UserError(f"--sae-path {args.sae_path} does not exist or is not a folder")
    if args.demo:
        from mechinterp.toyworld import DEMO_MODEL_NAME, ensure_demo_world

        world = ensure_demo_world(constants.demo_dir(), log=make_logger(args))
        if args.sae_path is not None:  # e.g. an SAE trained on the demo model in Chapter 5
            sae_path, sae_label = Path(args.sae_path), folder_label(Path(args.sae_path))
        else:
            sae_path, sae_label = world.sae_dir, "toy SAE (planted features)"
        return Source(str(world.model_dir), "", "", sae_path, True, DEMO_MODEL_NAME, sae_label)
    label = folder_label(Path(args.model)) if Path(args.model).is_dir() else args.model
    return Source(args.model, args.sae_release, args.sae_id, args.sae_path, False, label)


def load(args: argparse.Namespace, source: Source | None = None, log=None) -> Loaded:
    """Load the SAE, then the model it was trained on, per the common flags."""
    source = source or resolve_source(args)
    device = pick_device(args.device)
    log = log or (lambda _msg: None)
    start = time.perf_counter()
    if source.sae_path is None or not Path(source.model).is_dir():
        go_offline_if_hub_unreachable(log)
    log(f"loading SAE {source.sae_path or f'{source.sae_release}/{source.sae_id}'} ...")
    loaded_sae = load_sae(source.sae_release, source.sae_id, source.sae_path, device)
    if source.sae_label:
        loaded_sae.label = source.sae_label
    log(f"loading model {source.model_label} on {device} ...")
    model = load_model(source.model, loaded_sae, device)
    if source.is_demo:
        import torch

        # The toy model is 64 wide: thread hand-offs cost more than they save (10x slower on a busy CPU).
        torch.set_num_threads(1)
    log(f"loaded in {time.perf_counter() - start:.1f}s")
    return Loaded(model=model, sae=loaded_sae, model_label=source.model_label, device=device, is_demo=source.is_demo)


def progress_bar(total: int, desc: str, quiet: bool, unit: str = "it"):
    """A tqdm bar on stderr for a person watching a terminal; logs, pipes and CI stay clean."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                mininterval=0.5)


def make_logger(args: argparse.Namespace):
    """Progress messages go to stderr (results go to stdout), and not at all with --quiet."""
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(msg, file=sys.stderr)
