"""Loading the language model and its SAE, the way the libraries intend, with clear failures.

The SAE is loaded first: its own metadata says which model it was trained on, which hook it reads
and which keyword arguments the model must be loaded with (``model_from_pretrained_kwargs``; for
``gpt2-small-res-jb`` that is ``center_writing_weights=True``). Loading the model any other way
silently changes the residual stream the SAE sees.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mechinterp.core.constants import NEURONPEDIA_BASE
from mechinterp.core.progress import Log

if TYPE_CHECKING:  # torch is imported where it is used, so that cached reruns never pay for it
    import torch
from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.provenance import Provenance, sae_identity

# What the model forward and the SAE encode may compute in. float32 is exact (it agrees with SAELens and
# TransformerLens to float rounding); bfloat16 matmuls are several times faster where the CPU or GPU has
# bf16 instructions, and emulated (far slower) where it has none (docs/performance.md: speed, and how
# close the results are); float16 only on CUDA GPUs.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
HUB_PROBE_SECONDS = 3.0  # one connection attempt; a reachable Hub answers far faster
HUB_HINT = (
    "Connect to the internet for the first run (GPT-2 small and the SAE are about 700 MB), "
    "or point HF_HOME at a Hugging Face cache that has the files, or pass --sae-path DIR for a "
    "local SAE. To see the whole pipeline without network, add --demo."
)


@dataclass
class LoadedSAE:
    """An SAE plus what the project needs to know about it."""

    sae: Any  # sae_lens.SAE
    hook_name: str
    label: str  # how titles and tables name it, e.g. "gpt2-small-res-jb/blocks.8.hook_resid_pre"
    neuronpedia_id: str | None
    log_sparsity: torch.Tensor | None  # log10 feature density, when the release ships it
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = True
    context_size: int | None = None  # tokens per sequence in the SAE's training data (BOS included)
    model_name: str | None = None  # the model the SAE was trained on, as its metadata names it
    identity: str = ""  # release/id, or sha256 of a local folder's weights (see mechinterp.core.provenance)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def hook_layer(self) -> int:
        return hook_layer(self.hook_name)


@dataclass
class Loaded:
    """Everything a chapter script needs to encode text into SAE features."""

    model: Any  # transformer_lens.HookedTransformer
    sae: LoadedSAE
    model_label: str
    device: str
    is_demo: bool = False
    dtype: str = DEFAULT_DTYPE  # what the model and SAE compute in (one of DTYPES); summaries are float32 always

    @property
    def provenance(self) -> Provenance:
        """The model, SAE and hook behind every feature id of this run."""
        return Provenance(self.model_label, self.sae.identity, self.sae.hook_name)

    @property
    def title(self) -> str:
        """Names the model, SAE and hook, for figure titles."""
        prefix = "SYNTHETIC DEMO · " if self.is_demo else ""
        suffix = f" · {self.dtype}" if self.dtype != DEFAULT_DTYPE else ""
        return f"{prefix}{self.model_label} · SAE {self.sae.label} · hook {self.sae.hook_name}{suffix}"


def hook_layer(hook_name: str) -> int:
    """The block index of a hook such as ``blocks.8.hook_resid_pre`` (8)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    if not match:
        raise UserError(f"the SAE reads hook {hook_name!r}, which is not inside a transformer block")
    return int(match.group(1))


def folder_label(path: Path) -> str:
    """A short, still recognisable name for a local folder: its last two components (``runs/sae``)."""
    parts = path.resolve().parts
    return "/".join(parts[-2:])


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str:
    """The feature's Neuronpedia page, or "" when the SAE is not on Neuronpedia."""
    return f"{NEURONPEDIA_BASE}/{neuronpedia_id}/{feature}" if neuronpedia_id else ""


def pick_device(requested: str | None) -> str:
    """The device to run on: the user's choice, else CUDA when available, else CPU."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but this machine has no CUDA GPU; use --device cpu")
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps was requested but MPS is not available here; use --device cpu")
        warnings.warn(
            "TransformerLens has known silent-numerics problems on MPS; compare against --device cpu "
            "before trusting the numbers.",
            stacklevel=2,
        )
    return requested


def check_dtype(dtype: str, device: str) -> None:
    """Refuse a compute dtype that is unknown or unsafe on this device.

    float16 is offered on CUDA GPUs only: CPUs have no fast float16 matmuls (it is slower than
    float32 there, and some ops are missing), and TransformerLens warns against it on MPS. bfloat16
    has float32's range, so GPT-2's large BOS residual (norm ~3,000) cannot overflow it.

    Raises:
        UserError: for an unknown dtype, or float16 off CUDA.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "float16" and not device.startswith("cuda"):
        raise UserError(
            f"--dtype float16 is only offered on a CUDA GPU, and this run uses {device}: float16 is slower "
            "than float32 on a CPU and unreliable on MPS. Use --dtype bfloat16 (same speed-up where the "
            "CPU has bf16 instructions, float32's range) or the default float32."
        )


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for one of :data:`DTYPES`."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def cpu_bf16_instructions() -> list[str] | None:
    """The CPU's native bfloat16 instruction sets, as its flags name them ([] = none), or None when unknown.

    x86: ``avx512_bf16`` (bf16 dot products) and ``amx_bf16`` (AMX tiles); Arm: ``bf16``. Without
    them PyTorch still computes in bfloat16, by converting to float32 and back, which is slower than
    float32 itself. Reads ``/proc/cpuinfo`` on Linux and ``sysctl`` on macOS.
    """
    import platform
    import subprocess

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = None
    if text is not None:
        flags: set[str] = set()
        for line in text.splitlines():
            if line.lower().startswith(("flags", "features")):
                flags.update(line.split(":", 1)[1].split())
        return sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return ["FEAT_BF16"] if out == "1" else [] if out == "0" else None
    return None


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Keep library chatter the user cannot act on (load banners, deprecation notes) off the terminal."""
    from transformers.utils import logging as hf_logging

    previous = logging.root.manager.disable
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hub_bars_were_off = hub_progress_bars_disabled()
    logging.disable(logging.WARNING)
    # transformers' per-tensor "Loading weights" bars say nothing useful; the Hub's download bars (with
    # sizes, on stderr) must stay on: the first run downloads about 700 MB. transformers'
    # disable_progress_bar() turns huggingface_hub's bars off too, so they are turned back on.
    hf_logging.disable_progress_bar()
    enable_hub_progress_bars()
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if bars_were_on:
            hf_logging.enable_progress_bar()  # (this turns the Hub's bars on again as well)
        if hub_bars_were_off:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


def hub_progress_bars_disabled() -> bool:
    from huggingface_hub.utils import are_progress_bars_disabled

    return bool(are_progress_bars_disabled())


def enable_hub_progress_bars() -> None:
    from huggingface_hub.utils import enable_progress_bars

    enable_progress_bars()


def is_download_failure(err: BaseException) -> bool:
    """True when an exception means "the Hub could not be reached and the file is not cached"."""
    names = {cls.__name__ for cls in type(err).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(err).__mro__}
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError", "TimeoutException"}:
        return True
    if modules & {"huggingface_hub", "httpx", "requests", "urllib3"}:
        return True
    text = str(err).lower()
    return isinstance(err, OSError) and any(
        s in text for s in ("offline", "connect", "couldn't", "cannot find the requested files", "hub")
    )


def download_error(what: str, err: BaseException) -> EnvironmentProblem:
    from huggingface_hub import constants as hub

    if hub.HF_HUB_OFFLINE:
        reason = f"offline, and the files are not in the cache at {hub.HF_HUB_CACHE}"
    else:
        first = str(err).strip().split(". ")[0]
        reason = first[:200] if first else type(err).__name__
    return EnvironmentProblem(f"could not fetch {what} from the Hugging Face Hub ({reason}). {HUB_HINT}")


def hub_reachable() -> bool:
    """One quick request to the Hub through huggingface_hub's own HTTP session.

    That session honours the proxy settings (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) and any
    custom session the user configured, so behind a proxy the answer is the same as for the real
    download. Any HTTP answer, even an error status, means the Hub can be reached.
    """
    from huggingface_hub import constants as hub
    from huggingface_hub.utils import get_session

    try:
        get_session().head(hub.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception:  # DNS failure, refused, timed out, proxy refusal: all mean "not from here"
        return False
    return True


def go_offline_if_hub_unreachable(log: Log) -> None:
    """Switch huggingface_hub to offline mode when the Hub cannot be reached.

    Without this, every file request is retried with exponential back-off (about 30 s per file) before
    the library falls back to its cache. One quick request decides instead: cached files are then used
    at once, and missing files fail at once with a clear message. Setting the module constant is the
    run-time equivalent of ``HF_HUB_OFFLINE=1``, which both huggingface_hub and transformers read at
    call time.
    """
    from huggingface_hub import constants as hub

    if hub.HF_HUB_OFFLINE:
        return
    if not hub_reachable():
        hub.HF_HUB_OFFLINE = True
        log(f"note: {urlparse(hub.ENDPOINT).hostname} is unreachable; using the local Hugging Face cache only")


def validate_release(release: str, sae_id: str) -> None:
    """Fail early, with close matches, on an SAE release or id that SAELens does not know."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"unknown SAE release {release!r}.{hint} (SAELens lists {len(directory)} releases)")
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.5) or ids[:5]
        raise UserError(f"unknown SAE id {sae_id!r} in release {release!r}. Close matches: {', '.join(close)}")


def load_sae_from_disk(path: Path, device: str) -> Any:
    """An SAE saved by SAELens' ``save_model`` (cfg.json + sae_weights.safetensors)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise UserError(
            f"--sae-path {path} is not an SAE folder: it needs cfg.json and sae_weights.safetensors "
            "(as written by SAELens' save_model)"
        )
    with quiet_third_party():
        return SAE.load_from_disk(path, device=device)


def load_sae(release: str, sae_id: str, sae_path: Path | None, device: str, dtype: str = DEFAULT_DTYPE) -> LoadedSAE:
    """Load the SAE from a local folder (``sae_path``) or from SAELens' pretrained directory.

    ``dtype`` (one of :data:`DTYPES`) is what it encodes in; its weights are loaded as stored and cast.
    """
    log_sparsity = None
    if sae_path is not None:
        sae = load_sae_from_disk(sae_path, device)
        sparsity_file = Path(sae_path) / "sparsity.safetensors"
        if sparsity_file.is_file():
            from safetensors.torch import load_file

            log_sparsity = load_file(sparsity_file)["sparsity"]
        label = folder_label(Path(sae_path))
    else:
        from sae_lens import SAE

        validate_release(release, sae_id)
        try:
            with quiet_third_party():
                sae, _, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device=device)
        except Exception as err:
            if is_download_failure(err):
                raise download_error(f"the SAE {release}/{sae_id}", err) from err
            raise
        label = f"{release}/{sae_id}"
    if dtype != DEFAULT_DTYPE:
        sae = sae.to(dtype=torch_dtype(dtype))
    meta = sae.cfg.metadata
    hook_name = meta.hook_name
    if not hook_name:
        raise UserError(f"the SAE {label} does not say which hook it reads (cfg.json has no hook_name)")
    return LoadedSAE(
        sae=sae,
        hook_name=hook_name,
        label=label,
        neuronpedia_id=meta.neuronpedia_id,
        log_sparsity=log_sparsity,
        model_kwargs=dict(meta.model_from_pretrained_kwargs or {}),
        prepend_bos=meta.prepend_bos is not False,
        context_size=int(meta.context_size) if meta.context_size else None,
        model_name=meta.model_name or None,
        identity=sae_identity(release, sae_id, sae_path),
    )


def load_model(model_name: str, loaded_sae: LoadedSAE, device: str, dtype: str = DEFAULT_DTYPE) -> Any:
    """Load the model with the kwargs the SAE asks for, and check the SAE fits it."""
    model = load_hooked_model(model_name, device, loaded_sae.model_kwargs, dtype)
    check_compatible(model, loaded_sae)
    return model


def load_hooked_model(model_name: str, device: str, kwargs: dict[str, Any], dtype: str = DEFAULT_DTYPE) -> Any:
    """A HookedTransformer by TransformerLens name or from a local Hugging Face folder, in eval mode.

    ``kwargs`` go to ``HookedTransformer.from_pretrained`` (e.g. ``center_writing_weights=True``).
    The weights are loaded and processed (LayerNorm folding, centring) in float32 and only then cast
    to ``dtype``, so reduced precision costs only the forward pass, not the weight processing. The
    model then runs GELU and attention on PyTorch's fused kernels (:func:`use_fused_gelu`,
    :func:`mechinterp.core.fast_attention.use_fast_attention`), which agree with TransformerLens to float
    rounding and keep every hook.
    """
    from transformer_lens import HookedTransformer

    check_dtype(dtype, device)
    try:
        with quiet_third_party():
            if (Path(model_name) / "config.json").is_file():
                model = load_local_model(Path(model_name), device, kwargs)
            else:
                model = HookedTransformer.from_pretrained(model_name, device=device, **kwargs)
    except ValueError as err:
        if "not found" in str(err):
            raise UserError(
                f"unknown model {model_name!r}: TransformerLens does not list it "
                "(examples: gpt2-small, gpt2-medium, pythia-70m), and it is not a local model folder"
            ) from err
        raise
    except Exception as err:
        if is_download_failure(err):
            raise download_error(f"the model {model_name}", err) from err
        raise
    model.eval()
    if dtype != DEFAULT_DTYPE:
        model.to(torch_dtype(dtype), print_details=False)
    use_fused_gelu(model)
    from mechinterp.core.fast_attention import use_fast_attention

    use_fast_attention(model)  # models other than GPT-2-like ones keep TransformerLens' own attention
    return model


def use_fused_gelu(model: Any) -> None:
    """Compute GPT-2's ``gelu_new`` with PyTorch's fused kernel instead of TransformerLens' Python version.

    ``gelu_new`` is exactly the tanh approximation of GELU. TransformerLens evaluates it as five
    separate elementwise passes over ``[batch, pos, d_mlp]``; ``F.gelu(approximate="tanh")`` does it in
    one, about 8x faster on a CPU, and agrees to 3e-7. On GPT-2 small that is a large share of the
    forward pass up to the hook.
    """
    import functools

    import torch.nn.functional as F

    if getattr(model.cfg, "act_fn", None) != "gelu_new":
        return
    fused = functools.partial(F.gelu, approximate="tanh")
    for block in model.blocks:
        if hasattr(block.mlp, "act_fn"):
            block.mlp.act_fn = fused


# TransformerLens picks a model's loader by substrings of its name, and a local folder's name is its path:
# "/tmp/tests-mg8l3ot5/model" would load as T5, "~/llama-notes/gpt2" as Llama.
NAME_PATTERNS = ("t5", "bert", "hubert", "wav2vec2", "llama", "gemma", "python", "v0", "_old")


def neutral_path(path: Path) -> Path:
    """``path``, or a link to it whose name holds none of :data:`NAME_PATTERNS` (a hex digest in a fixed
    folder of the temporary directory), so TransformerLens reads the folder's config.json as it is."""
    text = str(path.resolve()).lower()
    if not any(p in text for p in NAME_PATTERNS):
        return path
    links = Path(tempfile.gettempdir()) / "mechinterp-local-models"
    link = links / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not any(p in str(link).lower() for p in NAME_PATTERNS):
        links.mkdir(exist_ok=True)
        if not link.exists():
            try:
                link.symlink_to(path.resolve(), target_is_directory=True)
            except FileExistsError:  # another process made the same link at the same moment
                pass
        return link
    return path


def load_local_model(path: Path, device: str, kwargs: dict[str, Any]) -> Any:
    """A Hugging Face model folder on disk, processed exactly as ``HookedTransformer.from_pretrained`` does.

    TransformerLens' ``from_pretrained`` only accepts names from its list of official models, but its
    config and weight converters accept a local folder; this runs the same steps on one.
    """
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading

    options = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}
    options.update({k: v for k, v in kwargs.items() if k in options})
    extra = {k: v for k, v in kwargs.items() if k not in options}
    name = str(neutral_path(path))
    cfg = tl_loading.get_pretrained_model_config(
        name, fold_ln=options["fold_ln"], device=device, dtype=torch.float32, **extra
    )
    # The weights come from a model loaded here: TransformerLens resolves the link back to the folder's
    # own path before it picks a loader by substrings of it.
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    state_dict = tl_loading.get_pretrained_state_dict(name, cfg, hf_model, dtype=torch.float32)
    del hf_model
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **options)
    model.move_model_modules_to_device()
    return model


def hook_width(model: Any, hook_name: str) -> int | None:
    """The width of the activation at ``hook_name`` as an SAE sees it (``hook_z`` flattened over heads).

    None for hooks whose width this project does not know (the SAE's own check then applies).
    """
    cfg = model.cfg
    last = hook_name.rsplit(".", 1)[-1]
    if last == "hook_z":
        return int(cfg.n_heads * cfg.d_head)  # SAELens flattens [n_heads, d_head] (reshape_activations="hook_z")
    if last in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
        return int(cfg.d_model)
    if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return int(cfg.d_mlp)
    return None


def check_compatible(model: Any, loaded_sae: LoadedSAE) -> None:
    """The SAE must read a hook that exists in the model, with that hook's width."""
    if loaded_sae.hook_name not in model.hook_dict:
        raise UserError(
            f"the SAE {loaded_sae.label} reads {loaded_sae.hook_name}, which this model does not have "
            f"(it has {model.cfg.n_layers} layers); pick an SAE made for this model"
        )
    d_in = int(loaded_sae.sae.cfg.d_in)
    width = hook_width(model, loaded_sae.hook_name)
    if width is not None and d_in != width:
        raise UserError(
            f"the SAE {loaded_sae.label} expects width {d_in} but this model's {loaded_sae.hook_name} has width "
            f"{width}; pick an SAE made for this model"
        )
