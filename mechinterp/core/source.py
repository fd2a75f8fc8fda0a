"""Which model and SAE a run uses, and loading them: typed options in, a loaded model + SAE out.

The chapter scripts get :class:`SourceOptions` from their command-line flags (``mechinterp.cli``
builds the flags from its fields); a notebook builds one directly::

    from mechinterp.core.source import SourceOptions, resolve_source, load
    loaded = load(resolve_source(SourceOptions(demo=True)))

Resolving is separate from loading so that a fully cached rerun can know *what* it would load (for the
cache key and titles) without paying for loading it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mechinterp.core import constants
from mechinterp.core.errors import UserError
from mechinterp.core.loading import (
    DEFAULT_DTYPE,
    DTYPES,
    Loaded,
    LoadedSAE,
    check_dtype,
    cpu_bf16_instructions,
    folder_label,
    go_offline_if_hub_unreachable,
    load_model,
    load_sae,
    pick_device,
)
from mechinterp.core.options import option
from mechinterp.core.progress import Log, silent
from mechinterp.core.provenance import same_model
from mechinterp.core.toyworld import DEMO_MODEL_NAME, ensure_demo_world


@dataclass
class SourceOptions:
    """The model and SAE to use (the "model and SAE" flags of every chapter)."""

    model: str | None = option(
        None, "TransformerLens model name, or a local Hugging Face model folder (default: the model the SAE was "
        f"trained on, as its metadata says: {constants.DEFAULT_MODEL} for the default SAE)")
    sae_release: str = option(constants.DEFAULT_SAE_RELEASE, "SAELens pretrained release (default: %(default)s)")
    sae_id: str = option(constants.DEFAULT_SAE_ID, "SAE id within the release (default: %(default)s)")
    sae_path: Path | None = option(
        None, "an SAE saved with SAELens' save_model (cfg.json + sae_weights.safetensors); used instead of "
        "--sae-release/--sae-id", type=Path, metavar="DIR")
    device: str | None = option(None, "cpu, cuda or mps (default: cuda when available, else cpu; mps only on request)")
    dtype: str = option(
        DEFAULT_DTYPE, "what the model and the SAE compute in: float32 agrees with SAELens to float rounding; "
        "bfloat16 is faster on CPUs and GPUs with bf16 instructions (much slower on CPUs without) and moves "
        "activations by up to a few percent; float16 only on a CUDA GPU. Statistics and outputs are float32 "
        "either way; see docs/performance.md (default: %(default)s)", choices=DTYPES)
    demo: bool = option(
        False, "run on the synthetic toy world (a tiny GPT-2-shaped model and SAE with planted features), "
        "built locally in seconds; needs no network")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclass
class Source:
    """Where the model and SAE come from, resolved from the options (nothing is loaded yet)."""

    model: str | None  # None: the SAE's own model, known once the SAE is loaded
    sae_release: str
    sae_id: str
    sae_path: Path | None
    is_demo: bool
    model_label: str
    sae_label: str | None = None
    device: str | None = None  # as requested; None = pick at load time
    dtype: str = DEFAULT_DTYPE  # one of mechinterp.core.loading.DTYPES

    def cache_identity(self) -> dict[str, str]:
        """What determines the features of a text, for the activation cache's key (the dtype too:
        bfloat16 summaries differ from float32 ones by about a percent)."""
        if self.sae_path is not None:
            weights = self.sae_path / "sae_weights.safetensors"
            stat = weights.stat() if weights.exists() else None
            sae = f"path:{self.sae_path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        else:
            sae = f"release:{self.sae_release}/{self.sae_id}"
        model = self.model or "the SAE's own model"
        if self.model and Path(model).is_dir():
            config = Path(model) / "config.json"
            model = f"dir:{Path(model).resolve()}:{config.stat().st_mtime_ns if config.exists() else 0}"
        return {"model": model, "sae": sae, "dtype": self.dtype}


def demo_prompts_dir(log: Log = silent) -> Path:
    """The demo world's prompt folder (building the world on first use)."""
    return ensure_demo_world(constants.demo_dir(), log=log).prompts_dir


def resolve_prompt_folder(folder: Path | None, demo: bool) -> Path:
    """``folder`` when given, else the demo world's prompts for a demo run, else prompts/ beside the scripts."""
    if folder is not None:
        return Path(folder)
    if demo:
        return demo_prompts_dir()
    return constants.DEFAULT_PROMPTS_DIR


def resolve_source(options: SourceOptions, log: Log = silent) -> Source:
    """Apply ``demo`` (building the toy world if needed) and validate the SAE options and the dtype."""
    if options.dtype == "float16":  # refused before any cache lookup; needs torch to know the device
        check_dtype(options.dtype, pick_device(options.device))
    if options.sae_path is not None and not Path(options.sae_path).is_dir():
        raise UserError(f"--sae-path {options.sae_path} does not exist or is not a folder")
    if options.demo:
        world = ensure_demo_world(constants.demo_dir(), log=log)
        if options.sae_path is not None:  # e.g. an SAE trained on the demo model in Chapter 5
            sae_path, sae_label = Path(options.sae_path), folder_label(Path(options.sae_path))
        else:
            sae_path, sae_label = world.sae_dir, "toy SAE (planted features)"
        return Source(
            str(world.model_dir), "", "", sae_path, True, DEMO_MODEL_NAME, sae_label, options.device, options.dtype
        )
    model = options.model
    label = (folder_label(Path(model)) if Path(model).is_dir() else model) if model else ""
    return Source(
        model, options.sae_release, options.sae_id, options.sae_path, False, label, device=options.device,
        dtype=options.dtype,
    )


def load(source: Source, log: Log = silent) -> Loaded:
    """Load the SAE, then the model it was trained on (with the SAE's model-loading kwargs)."""
    device = pick_device(source.device)
    check_dtype(source.dtype, device)
    if source.dtype == "bfloat16" and device == "cpu" and cpu_bf16_instructions() == []:
        log("note: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16): PyTorch emulates them, so "
            "--dtype bfloat16 runs many times slower than float32 here; it pays off on CPUs and GPUs that have them")
    start = time.perf_counter()
    if source.sae_path is None or source.model is None or not Path(source.model).is_dir():
        go_offline_if_hub_unreachable(log)
    log(f"loading SAE {source.sae_path or f'{source.sae_release}/{source.sae_id}'} ...")
    loaded_sae = load_sae(source.sae_release, source.sae_id, source.sae_path, device, source.dtype)
    if source.sae_label:
        loaded_sae.label = source.sae_label
    model_name, model_label = model_for(source, loaded_sae)
    in_dtype = f" in {source.dtype}" if source.dtype != DEFAULT_DTYPE else ""
    log(f"loading model {model_label} on {device}{in_dtype} ...")
    model = load_model(model_name, loaded_sae, device, source.dtype)
    log(f"loaded in {time.perf_counter() - start:.1f}s")
    return Loaded(
        model=model, sae=loaded_sae, model_label=model_label, device=device, is_demo=source.is_demo, dtype=source.dtype
    )


def model_for(source: Source, loaded_sae: LoadedSAE) -> tuple[str, str]:
    """The model to load, and its label: the one asked for, else the one the SAE was trained on.

    Raises:
        UserError: when both are named and differ (an SAE reads a particular model's activations;
            another model's are meaningless to it), or when neither is known.
    """
    trained_on = loaded_sae.model_name
    if source.model is None:
        if not trained_on:
            raise UserError(f"the SAE {loaded_sae.label} does not say which model it was trained on; pass --model")
        return trained_on, trained_on
    if trained_on and not Path(source.model).is_dir() and not same_model(source.model, trained_on):
        raise UserError(
            f"the SAE {loaded_sae.label} was trained on {trained_on}, not on {source.model}; drop --model to use "
            f"{trained_on}, or pick an SAE made for {source.model}"
        )
    return source.model, source.model_label


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave as is), then restore the previous setting."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def demo_threads(is_demo: bool) -> contextlib.AbstractContextManager[None]:
    """One torch thread for the demo world, restored afterwards.

    The toy model is 64 wide: thread hand-offs cost more than they save (10x slower on a busy CPU).
    """
    return torch_threads(1 if is_demo else None)
