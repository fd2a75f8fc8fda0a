"""Benchmark: Chapter 2 end to end, as a user runs it, at 100, 1,000 and 10,000 prompts per group.

Chapter 2 must stay usable when a learner pastes in thousands of prompts (issue 20, point 4). This
benchmark runs ``python MechInterpFeatureMeaning.py --prompts DIR --out DIR`` in a subprocess, exactly
as a user would, once with an empty activation cache ("cold") and once more with the cache it left
("warm"), and measures the whole command's wall time and peak resident memory, the script's own
seconds per stage (from its run record), the activation cache's files and bytes, and the largest
figure's pixel size. The targets, on 2 CPU cores with a GPT-2-sized model: 10,000 prompts per group no
slower per prompt than 1,000, and a peak memory at most 1.2x the 1,000-prompt run's.

Everything runs offline through the real loading path: ``HookedTransformer.from_pretrained("gpt2-small")``
and SAELens' ``gpt2-small-res-jb`` / ``blocks.8.hook_resid_pre`` find, in a private Hugging Face cache,
a model of GPT-2 small's exact shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257,
GPT-2's real tokenizer) with random weights, and a 768 -> 24,576 SAE whose bias makes ~60 features
fire per token (the ``l0`` SAELens lists for that SAE). The files are written by the functions of
``tests/gpt2_world.py``, under the real names. The prompts are seeded random sentences of frequent
GPT-2 words (12-40 tokens); each prompt of the ``happy`` and ``angry`` groups carries one word of its
concept. Speed hardly depends on the words; how many features differ between groups does.

Run from the repository root:
    python bench/bench_meaning.py --quick          # 50 and 200 prompts per group, narrow model: a few minutes
    python bench/bench_meaning.py                  # 100, 1,000 and 10,000 per group, GPT-2 small's shape
    python bench/bench_meaning.py --sizes 100 1000 # other sizes
    python bench/bench_meaning.py --wait-for-quiet 1.2   # first wait for a quiet machine

Prints a markdown table and writes ``bench/results/bench_meaning[_quick].json`` (everything measured,
the machine, load) and ``.md`` (the tables).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # `python bench/bench_meaning.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from tests import gpt2_world as gw  # the real names and file formats, written offline

SCRIPT = ROOT / "MechInterpFeatureMeaning.py"  # Chapter 2, run as a user runs it
MEASURE = BENCH_DIR / "measure_command.py"  # the small wrapper that measures one command
RUN_RECORD = "MechInterpFeatureMeaning_run.json"  # the script's run record in its output folder
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_SIZES = (100, 1000, 10000)  # prompts per group (issue 20)
QUICK_SIZES = (50, 200)
GROUPS = ("baseline", "happy", "angry")  # the baseline and two groups with a concept word each
CONCEPTS = {"happy": gw.HAPPY_WORDS, "angry": gw.ANGRY_WORDS}
PLANTED_PER_CONCEPT = 2  # SAE features reading each concept's direction (a real SAE has several per concept)
CONCEPT_GAIN = 2.0  # the concept direction added to its words' embeddings, in units of a typical row's norm
MIN_WORDS, MAX_WORDS = 11, 36  # words per prompt; with the full stop and a few split words, 12-40 tokens
GPT2_SAE_L0 = 60.0  # SAELens' pretrained_saes.yaml lists l0: 60 for gpt2-small-res-jb blocks.8
# Targets (issue 20): the largest size against the one below it (10,000 vs 1,000 by default).
TARGET_PER_PROMPT = 1.0  # per-prompt time at most this multiple of the smaller size's
TARGET_MEMORY = 1.2  # peak RSS at most this multiple of the smaller size's
CONTENTION_WARNING = 0.05  # share of the cores used by other processes above which timings are suspect


@dataclass(frozen=True)
class Shape:
    """The random model's and SAE's sizes; the defaults are GPT-2 small's and gpt2-small-res-jb's."""

    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_sae: int = 24576


FULL_SHAPE = Shape()
QUICK_SHAPE = Shape(d_model=128, n_heads=4, d_sae=4096)  # --quick: same code paths, a fraction of the FLOPs


# --- the world: a GPT-2-shaped model and SAE in a Hugging Face cache, under the real names -------------


def gpt2_weights(rng: np.random.Generator, shape: Shape) -> dict[str, np.ndarray]:
    """Random GPT-2 weights under the Hub checkpoint's keys (Conv1D layout ``[in, out]``), float32.

    GPT-2's own initialisation (std 0.02, residual projections 0.02 / sqrt(2 x layers)), so the
    residual stream keeps realistic proportions between the embeddings and what the blocks add.
    """
    d, n_layers = shape.d_model, shape.n_layers

    def normal(*size: int, std: float = 0.02) -> np.ndarray:
        return rng.standard_normal(size, dtype=np.float32) * np.float32(std)

    proj_std = 0.02 / np.sqrt(2 * n_layers)
    weights = {"wte.weight": normal(gw.VOCAB_SIZE, d), "wpe.weight": normal(gw.N_CTX, d, std=0.01)}
    for layer in range(n_layers):
        p = f"h.{layer}."
        weights |= {
            p + "ln_1.weight": np.ones(d, np.float32), p + "ln_1.bias": np.zeros(d, np.float32),
            p + "attn.c_attn.weight": normal(d, 3 * d), p + "attn.c_attn.bias": np.zeros(3 * d, np.float32),
            p + "attn.c_proj.weight": normal(d, d, std=proj_std), p + "attn.c_proj.bias": np.zeros(d, np.float32),
            p + "ln_2.weight": np.ones(d, np.float32), p + "ln_2.bias": np.zeros(d, np.float32),
            p + "mlp.c_fc.weight": normal(d, 4 * d), p + "mlp.c_fc.bias": np.zeros(4 * d, np.float32),
            p + "mlp.c_proj.weight": normal(4 * d, d, std=proj_std), p + "mlp.c_proj.bias": np.zeros(d, np.float32),
        }
    return weights | {"ln_f.weight": np.ones(d, np.float32), "ln_f.bias": np.zeros(d, np.float32)}


def calibrated_sae(rng: np.random.Generator, resid: np.ndarray, d_sae: int, l0: float) -> dict[str, np.ndarray]:
    """A random ReLU SAE whose bias makes ~``l0`` features fire per token of ``resid``.

    A random encoder with a zero bias fires half of its features on every token, which no trained SAE
    does and which would bloat the sparse per-prompt summaries the chapter keeps and caches; the
    encoder is therefore scaled to unit-variance pre-activations and the bias set at the pre-activation
    that ``l0`` features per token exceed (as ``bench_encoding.py`` calibrates its SAE).

    Args:
        resid: ``[tokens, d_model]`` the model's centred ``blocks.8.hook_resid_pre`` on text tokens.
    """
    import torch

    d = resid.shape[1]
    w_enc = torch.from_numpy(rng.standard_normal((d, d_sae), dtype=np.float32))
    pre = torch.from_numpy(np.ascontiguousarray(resid, dtype=np.float32)) @ w_enc
    w_enc /= pre.std()
    pre /= pre.std()
    k = max(1, min(pre.numel(), round(l0 * pre.shape[0])))
    threshold = float(pre.flatten().topk(k).values[-1])
    w_dec = w_enc / w_enc.norm(dim=0, keepdim=True)
    return {"W_enc": w_enc.numpy(), "b_enc": np.full(d_sae, -threshold, np.float32),
            "W_dec": np.ascontiguousarray(w_dec.T.numpy()), "b_dec": np.zeros(d, np.float32)}


def gpt2_tokenizer() -> tuple[Any, dict[str, int], bytes]:
    """GPT-2's real tokenizer (a ``tokenizers.Tokenizer``), its vocabulary and its ``tokenizer.json`` bytes."""
    from tokenizers import Tokenizer

    vocab_file, merges_file = gw.gpt2_tokenizer_files()
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [line for line in merges_file.read_text(encoding="utf-8").split("\n")[1:] if line]
    data = json.dumps(gw.tokenizer_json(vocab, merges), ensure_ascii=False)
    return Tokenizer.from_str(data), vocab, data.encode("utf-8")


def plant_concepts(rng: np.random.Generator, weights: dict[str, np.ndarray], vocab: dict[str, int]) -> dict[str, np.ndarray]:
    """Give each concept's words a shared direction in the embedding (in place); returns the directions.

    With purely random weights no feature would tell the groups apart, and the chapter's verdicts and
    controls (the token-injection test above all) would have nothing to work on. The directions are
    orthonormal and have zero mean, so TransformerLens' centring keeps them whole.
    """
    wte = weights["wte.weight"]
    d = wte.shape[1]
    basis, _ = np.linalg.qr(np.concatenate([np.ones((d, 1)), rng.standard_normal((d, len(CONCEPTS)))], axis=1))
    gain = CONCEPT_GAIN * float(np.median(np.linalg.norm(wte[:2000], axis=1)))
    directions = {}
    for i, (concept, words) in enumerate(CONCEPTS.items()):
        directions[concept] = (gain * basis[:, 1 + i]).astype(np.float32)
        wte[list(gw._word_ids(vocab, words))] += directions[concept]
    return directions


def plant_features(rng: np.random.Generator, sae: dict[str, np.ndarray],
                   directions: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Turn ``PLANTED_PER_CONCEPT`` random features per concept into detectors of its direction (in place):
    they fire where the residual stream holds at least half of the planted direction."""
    picked = iter(int(f) for f in rng.permutation(sae["b_enc"].shape[0]))
    planted: dict[str, list[int]] = {}
    for concept, direction in directions.items():
        norm = float(np.linalg.norm(direction))
        planted[concept] = [next(picked) for _ in range(PLANTED_PER_CONCEPT)]
        for j, f in enumerate(planted[concept]):
            scale = (1.0 + j) / norm  # unit-scale activations, like the calibrated random features
            sae["W_enc"][:, f] = scale * direction / norm
            sae["b_enc"][f] = -0.5 * scale * norm  # half of the activation a concept word gives
            sae["W_dec"][f] = direction / norm
    return planted


def write_world(hf_home: Path, shape: Shape, l0: float, seed: int, words: Sequence[str]) -> dict[str, Any]:
    """Write the model (as ``gpt2``) and the SAE (as ``gpt2-small-res-jb`` / ``blocks.8.hook_resid_pre``,
    in its legacy format) into the Hugging Face home ``hf_home``; returns facts about them.

    The SAE is calibrated on the model's residual stream over sentences made like the benchmark's
    prompts (BOS first, centred as TransformerLens' ``center_writing_weights`` leaves it).
    """
    rng = np.random.default_rng(seed)
    tokenizer, vocab, tokenizer_bytes = gpt2_tokenizer()
    weights = gpt2_weights(rng, shape)
    directions = plant_concepts(rng, weights, vocab)
    config = gw._hf_config(shape.d_model, shape.n_layers, shape.n_heads)
    model_dir = gw.snapshot_dir(hf_home, gw.MODEL_REPO)
    gw._write_model(model_dir, config, weights, tokenizer_bytes, gw.gpt2_tokenizer_files())

    resid, concept_of = [], []
    for group in [GROUPS[0]] * 16 + [g for g in CONCEPTS for _ in range(4)]:
        ids = tokenizer.encode(group_sentence(rng, words, group)).ids
        x, _ = gw.gpt2_forward(weights, shape.n_heads, np.array([[gw.BOS_ID, *ids]]), gw.SAE_LAYER)
        resid.append(x[0, 1:] - x[0, 1:].mean(-1, keepdims=True))  # text tokens, centred; one at a time: no padding
        concept_of += [group if tokenizer.id_to_token(i)[1:] in CONCEPTS.get(group, ()) else "" for i in ids]
    resid_all, concept_of = np.concatenate(resid), np.array(concept_of)
    del weights
    sae = calibrated_sae(rng, resid_all, shape.d_sae, l0)
    planted = plant_features(rng, sae, directions)
    fired = (resid_all @ sae["W_enc"] + sae["b_enc"]) > 0
    gw._write_sae(gw.snapshot_dir(hf_home, gw.SAE_REPO) / gw.SAE_ID, sae,
                  gw.legacy_res_jb_cfg(shape.d_model, shape.d_sae), np.log10(fired.mean(0) + 1e-10).astype(np.float32))
    own = np.mean([fired[concept_of == c][:, fs].mean() for c, fs in planted.items()])
    elsewhere = fired[concept_of == ""][:, [f for fs in planted.values() for f in fs]].mean()
    return {"hf_home": str(hf_home), "shape": asdict(shape), "sae_l0_target": l0, "sae_l0_calibration": round(float(fired.sum(1).mean()), 1),
            "calibration_tokens": int(fired.shape[0]), "planted": planted,
            "planted_fire_on_concept_words": round(float(own), 3), "planted_fire_elsewhere": round(float(elsewhere), 4),
            "model_file_mb": round((model_dir / "model.safetensors").stat().st_size / 2**20, 1)}


# --- the prompts -----------------------------------------------------------------------------------------


def word_list(vocab: dict[str, int]) -> list[str]:
    """Frequent English words: GPT-2 tokens ``' word'`` of three or more lowercase letters among its first
    10,000 merges (the order of BPE merges roughly follows frequency; a few are word pieces), without the
    concept words."""
    planted = {w.lower() for words in CONCEPTS.values() for w in words}
    words = sorted((i, t[1:]) for t, i in vocab.items()
                   if t.startswith("Ġ") and re.fullmatch(r"[a-z]{3,}", t[1:]) and 256 <= i < 10256)
    return [w for _, w in words if w not in planted]


def baseline_sentence(rng: np.random.Generator, words: Sequence[str], n_words: int | None = None) -> str:
    """A sentence of Zipf-distributed words (frequent ones more often), capitalised, with a full stop."""
    n = n_words or int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    p = 1.0 / (np.arange(len(words)) + 10.0)
    picked = [words[i] for i in rng.choice(len(words), size=n, p=p / p.sum())]
    return " ".join([picked[0].capitalize(), *picked[1:]]) + "."


def group_sentence(rng: np.random.Generator, words: Sequence[str], group: str) -> str:
    """A prompt of ``group``: a baseline sentence, or one with a word of the group's concept in a random
    place (never first, so it is the word's ``' word'`` token, as in running text)."""
    n_words = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    if group not in CONCEPTS:
        return baseline_sentence(rng, words, n_words)
    body = baseline_sentence(rng, words, n_words - 1)[:-1].split(" ")
    body.insert(int(rng.integers(1, len(body) + 1)), str(rng.choice(CONCEPTS[group])))
    return " ".join(body) + "."


def prompt_sets(n: int, seed: int, words: Sequence[str]) -> dict[str, list[str]]:
    """``n`` distinct prompts per group (:func:`group_sentence`), seeded."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    sets: dict[str, list[str]] = {}
    for group in GROUPS:
        prompts: list[str] = []
        while len(prompts) < n:
            text = group_sentence(rng, words, group)
            if text not in seen:  # a duplicate would be dropped by the script, with a warning
                seen.add(text)
                prompts.append(text)
        sets[group] = prompts
    return sets


def write_prompts(folder: Path, sets: dict[str, list[str]]) -> list[Path]:
    """One ``<group>.txt`` per group, one prompt per line; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, prompts in sets.items():
        paths.append(folder / f"{group}.txt")
        paths[-1].write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return paths


# --- one run of Chapter 2, and one size ------------------------------------------------------------------


def chapter_env(hf_home: Path, project_cache: Path) -> dict[str, str]:
    """The user's environment, with the benchmark's Hugging Face cache (offline) and a private project cache.

    Threads are left at their defaults (all cores), as a user has them. Output is unbuffered so that the
    wrapper notes each line when it is printed (a pipe would otherwise hold it back until exit).
    """
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "MECHINTERP_CACHE": str(project_cache),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run_chapter(prompts: Path, out: Path, env: dict[str, str], work: Path, name: str,
                planted: dict[str, list[int]], profile: Path | None = None) -> dict[str, Any]:
    """Chapter 2 on ``prompts`` into ``out``, measured in a fresh wrapper process; what it cost and wrote.

    ``profile``: run it under ``cProfile`` and save the statistics there (the times then include the
    profiler's overhead).
    """
    measured = work / f"{name}_measure.json"
    log = work / f"{name}.log"
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    cmd = [sys.executable, *profiler, str(SCRIPT), "--prompts", str(prompts), "--out", str(out)]
    wrapper = [sys.executable, str(MEASURE), str(measured), str(log), "--", *cmd]
    subprocess.run(wrapper, cwd=ROOT, env=env, check=True)
    result = json.loads(measured.read_text(encoding="utf-8"))
    if result["returncode"] != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"Chapter 2 failed ({name}, exit {result['returncode']}):\n{tail}")
    record = json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))
    result["peak_rss_after_line"] = last_line_before(result.get("output_lines") or [], result["peak_rss_at_seconds"])
    return {**result, **record_facts(record), "cache": cache_usage(Path(env["MECHINTERP_CACHE"])),
            "figures": figure_sizes(out), "planted_ranks": planted_ranks(out, planted), "log": str(log)}


def last_line_before(lines: list[list[Any]], seconds: float | None) -> str | None:
    """The last line of output printed before ``seconds``: what the command was doing then."""
    if seconds is None:
        return None
    before = [text for at, text in lines if at <= seconds]
    return before[-1] if before else "(before any output)"


def profile_summary(path: Path, top: int = 25) -> dict[str, list[dict[str, Any]]]:
    """The project's functions by cumulative time, and every function by own time, from a cProfile file."""
    import pstats

    rows = []
    for (file, line, func), (_, calls, own, cumulative, _) in pstats.Stats(str(path)).stats.items():
        where = Path(file).resolve()
        name = f"{where.relative_to(ROOT)}:{line}({func})" if ROOT in where.parents else f"{file}:{line}({func})"
        rows.append({"function": name, "calls": calls, "cumulative_s": round(cumulative, 3), "own_s": round(own, 3),
                     "project": (ROOT / "mechinterp") in where.parents})
    by_cumulative = sorted((r for r in rows if r["project"]), key=lambda r: -r["cumulative_s"])[:top]
    by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    return {"project_by_cumulative": by_cumulative, "all_by_own_time": by_own}


def planted_ranks(out: Path, planted: dict[str, list[int]]) -> dict[str, list[int | None]]:
    """Each group's rank of its own planted features, from the script's feature table (a sanity check that
    the run found what was planted; empty when the table's layout is not the one expected)."""
    path = out / "feature_stats.csv"
    wanted = {(g, str(f)) for g, fs in planted.items() for f in fs}
    found: dict[tuple[str, str], int | None] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                if (rec["group"], rec["feature"]) in wanted:
                    found[rec["group"], rec["feature"]] = int(rec["rank"]) if rec["rank"] else None
    except (OSError, KeyError, ValueError):
        return {}
    return {g: [found.get((g, str(f))) for f in fs] for g, fs in planted.items()}


def record_facts(record: dict[str, Any]) -> dict[str, Any]:
    """What the benchmark reads from the script's run record (missing fields become None, so a change of
    the record's layout costs a column, not the run)."""
    injection = record.get("injection") or {}
    return {
        "stage_seconds": record.get("seconds", {}), "n_prompts": record.get("n_prompts"),
        "tokens": record.get("tokens_in_prompts"), "tokens_encoded": record.get("tokens_encoded"),
        "cache_hits": record.get("cache_hits"), "cache_misses": record.get("cache_misses"),
        "model_loaded": record.get("model_loaded"), "discoveries": record.get("discoveries"),
        "verdicts": record.get("verdicts"), "injection_texts": injection.get("texts"),
        "injection_seconds": injection.get("seconds"), "git_commit": record.get("git_commit"),
    }


def cache_usage(root: Path) -> dict[str, float]:
    """Files, folders and MB under the project cache (the activation cache lives there)."""
    files, folders, size = 0, 0, 0
    for _, dirs, names in os.walk(root):
        folders += len(dirs)
        for name in names:
            files += 1
            try:
                size += os.path.getsize(os.path.join(_, name))
            except OSError:
                pass
    return {"files": files, "folders": folders, "mb": round(size / 2**20, 1)}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG header (no image library needed)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def figure_sizes(out: Path) -> dict[str, list[int]]:
    """Every PNG the run wrote, name -> [width, height] in pixels."""
    return {p.name: list(png_size(p)) for p in sorted(out.rglob("*.png"))}


def bench_size(n: int, world: dict[str, Any], work: Path, seed: int, words: Sequence[str], tokenizer: Any,
               warm: bool, profile: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Chapter 2 at ``n`` prompts per group: cold (empty activation cache), then warm (the cache it left),
    then, with ``profile``, warm again under cProfile (where the time goes once encoding is cached)."""
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    sets = prompt_sets(n, seed, words)
    write_prompts(folder / "prompts", sets)
    lengths = [len(tokenizer.encode(t).ids) for prompts in sets.values() for t in prompts]
    env = chapter_env(Path(world["hf_home"]), folder / "project_cache")
    planted = world["planted"]
    row: dict[str, Any] = {"per_group": n, "total_prompts": len(lengths), "prompt_tokens": sum(lengths),
                           "tokens_min_max": [min(lengths), max(lengths)]}
    log(f"{n:,} prompts per group ({len(lengths):,} prompts, {sum(lengths):,} tokens): cold run ...")
    row["cold"] = run_chapter(folder / "prompts", folder / "out_cold", env, folder, "cold", planted)
    log(f"  cold {row['cold']['seconds']:.1f} s, peak {row['cold']['peak_rss_mb']:,.0f} MB, "
        f"cache {row['cold']['cache']['files']:,} files")
    if warm:
        row["warm"] = run_chapter(folder / "prompts", folder / "out_warm", env, folder, "warm", planted)
        log(f"  warm {row['warm']['seconds']:.1f} s, peak {row['warm']['peak_rss_mb']:,.0f} MB")
    if profile:
        stats = folder / "profiled.pstats"
        run = run_chapter(folder / "prompts", folder / "out_profiled", env, folder, "profiled", planted, stats)
        row["profiled"] = {"seconds": run["seconds"], "stage_seconds": run["stage_seconds"],
                           "pstats": str(stats), **profile_summary(stats)}
        log(f"  profiled warm run {run['seconds']:.1f} s: {stats}")
    return row


# --- the machine, the targets and the report -------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, bf16 instructions, cores, memory, versions (read without importing torch here)."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        memory_gb = None
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformer-lens", "sae-lens", "numpy", "scipy", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb,
            "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def per_prompt_ms(row: dict[str, Any]) -> float:
    return 1000 * row["cold"]["seconds"] / row["total_prompts"]


def evaluate_targets(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The two targets, comparing the largest size with the one below it (10,000 vs 1,000 by default)."""
    if len(rows) < 2:
        return {}
    big, ref = rows[-1], rows[-2]
    ratio_time = per_prompt_ms(big) / per_prompt_ms(ref)
    ratio_mem = big["cold"]["peak_rss_mb"] / ref["cold"]["peak_rss_mb"]
    compared = f"{big['per_group']:,} vs {ref['per_group']:,} per group"
    return {
        "per_prompt_time": {"compared": compared, "ratio": round(ratio_time, 3), "target": TARGET_PER_PROMPT,
                            "ok": ratio_time <= TARGET_PER_PROMPT},
        "peak_memory": {"compared": compared, "ratio": round(ratio_mem, 3), "target": TARGET_MEMORY,
                        "ok": ratio_mem <= TARGET_MEMORY},
    }


def largest_figure(run: dict[str, Any]) -> str:
    if not run["figures"]:
        return "-"
    name, (w, h) = max(run["figures"].items(), key=lambda item: item[1][0] * item[1][1])
    return f"{name} {w:,} x {h:,}"


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table; ``align`` has one letter per column: r(ight) or l(eft)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in (header, rule, *rows)]


def markdown(results: dict[str, Any]) -> str:
    """The tables: one row per size, the targets, then the script's own seconds per stage."""
    m, rows, world = results["machine"], results["rows"], results["world"]
    bf16 = ", ".join(m["bf16_instructions"]) or "none (no avx512_bf16, amx_bf16)"
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, bf16 instructions: {bf16}; "
         f"torch {m['versions'].get('torch')}; load average {results['load_average'][0]} at start, "
         f"{results['load_average'][1]} at end."),
        (f"Model: random weights of shape {world['shape']} (GPT-2's tokenizer, vocabulary 50,257), loaded as "
         f"gpt2-small; SAE gpt2-small-res-jb / blocks.8.hook_resid_pre, ~{world['sae_l0_calibration']:g} "
         f"features per token. Code: {results['git_commit']}."),
        "",
        *table(["prompts per group", "total prompts", "tokens", "time cold (s)", "time warm (s)",
                "per prompt (ms, cold)", "peak RSS cold (MB)", "peak RSS warm (MB)", "cache files", "cache (MB)",
                "largest figure (px)", "other processes"], "rrrrrrrrrrlr", [size_cells(r) for r in rows]),
        "",
        *target_lines(results["targets"]),
        "",
        ("Cold run, the script's own seconds per stage (its run record); 'other' = wall time minus their sum "
         "(start-up, imports, tables):"),
        "",
        *table(["prompts per group", "load", "encode", "cache", "statistics", "of which injection encode",
                "figures", "other", "injection prompts", "significant (q < 0.05)", "planted features' ranks",
                "peak RSS at (s), after the line"], "rrrrrrrrrlll", [stage_cells(r) for r in rows]),
    ]
    return "\n".join(lines) + "\n"


def size_cells(row: dict[str, Any]) -> list[str]:
    cold, warm = row["cold"], row.get("warm")
    others = cold["others_cpu_share"]
    return [f"{row['per_group']:,}", f"{row['total_prompts']:,}", f"{row['prompt_tokens']:,}",
            f"{cold['seconds']:,.1f}", f"{warm['seconds']:,.1f}" if warm else "-", f"{per_prompt_ms(row):,.1f}",
            f"{cold['peak_rss_mb']:,.0f}", f"{warm['peak_rss_mb']:,.0f}" if warm else "-",
            f"{cold['cache']['files']:,}", f"{cold['cache']['mb']:,.1f}", largest_figure(cold),
            "-" if others is None else f"{others:.0%}"]


def stage_cells(row: dict[str, Any]) -> list[str]:
    cold = row["cold"]
    s, inj, texts = cold["stage_seconds"], cold.get("injection_seconds") or {}, cold.get("injection_texts")
    other = cold["seconds"] - s.get("total", sum(s.values()))
    found = ", ".join(f"{g} {n:,}" for g, n in (cold.get("discoveries") or {}).items()) or "-"
    ranks = "; ".join(f"{g} {', '.join(map(str, r))}" for g, r in (cold.get("planted_ranks") or {}).items()) or "-"
    return [f"{row['per_group']:,}", *(f"{s.get(k, 0.0):,.1f}" for k in ("load", "encode", "cache", "statistics")),
            f"{sum(inj.values()):,.1f}", f"{s.get('figures', 0.0):,.1f}", f"{other:,.1f}",
            "-" if texts is None else f"{texts:,}", found, ranks,
            f"{cold['peak_rss_at_seconds']} '{(cold.get('peak_rss_after_line') or '')[:50]}'"]


def target_lines(targets: dict[str, dict[str, Any]]) -> list[str]:
    if not targets:
        return ["Targets: need at least two sizes."]
    cells = [[what, t["compared"], f"{t['ratio']:.2f}x", f"<= {t['target']:g}x", "PASS" if t["ok"] else "FAIL"]
             for what, t in (("per-prompt time (cold), larger / smaller", targets["per_prompt_time"]),
                             ("peak RSS (cold), larger / smaller", targets["peak_memory"]))]
    return table(["target", "compared", "measured", "limit", ""], "llrrl", cells)


# --- the command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Chapter 2 end to end (time, peak memory, cache files, figure sizes) at several "
        "numbers of prompts per group, offline, on a random GPT-2-small-shaped model and SAE.")
    parser.add_argument("--quick", action="store_true",
                        help=f"{' and '.join(map(str, QUICK_SIZES))} prompts per group on a narrow model "
                        f"(d_model {QUICK_SHAPE.d_model}, {QUICK_SHAPE.d_sae:,} features): checks that it works")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N",
                        help=f"prompts per group (default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--d-model", type=int, default=None,
                        help=f"the random model's width (default: {FULL_SHAPE.d_model}, with --quick {QUICK_SHAPE.d_model})")
    parser.add_argument("--n-heads", type=int, default=None,
                        help=f"its attention heads (default: {FULL_SHAPE.n_heads}, with --quick {QUICK_SHAPE.n_heads})")
    parser.add_argument("--d-sae", type=int, default=None,
                        help=f"the SAE's features (default: {FULL_SHAPE.d_sae:,}, with --quick {QUICK_SHAPE.d_sae:,})")
    parser.add_argument("--sae-l0", type=float, default=GPT2_SAE_L0,
                        help="features firing per token, calibrated into the random SAE (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts (default: %(default)s)")
    parser.add_argument("--no-warm", action="store_true", help="skip the rerun with a warm activation cache")
    parser.add_argument("--profile", action="store_true",
                        help="also rerun each size warm under cProfile; the top functions go to the JSON (and the "
                        "statistics files stay in --work)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="keep the world, prompts, caches, outputs and logs here (default: a temporary folder, "
                        "deleted at the end)")
    parser.add_argument("--wait-for-quiet", type=float, default=None, metavar="LOAD",
                        help="first wait (up to 20 minutes) until the 1-minute load average is below LOAD")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR",
                        help="folder for the JSON and markdown results (default: bench/results)")
    parser.add_argument("--quiet", action="store_true", help="print only the results table")
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)))
    base = QUICK_SHAPE if args.quick else FULL_SHAPE
    args.shape = Shape(base.n_layers, args.d_model or base.d_model, args.n_heads or base.n_heads,
                       args.d_sae or base.d_sae)
    if args.shape.d_model % args.shape.n_heads:
        parser.error("--d-model must be a multiple of --n-heads")
    if min(args.sizes) < 10:
        parser.error("--sizes: at least 10 prompts per group (the chapter needs 5 per group and split)")
    return args


def wait_for_quiet(threshold: float, log: Callable[[str], None], max_minutes: float = 20.0) -> bool:
    start = time.time()
    while os.getloadavg()[0] > threshold and time.time() - start < max_minutes * 60:
        log(f"load average {os.getloadavg()[0]:.2f} > {threshold}; waiting for a quiet machine ...")
        time.sleep(30)
    return os.getloadavg()[0] <= threshold


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the world, run every size, write the results; returns them."""
    log: Callable[[str], None] = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    quiet = wait_for_quiet(args.wait_for_quiet, log) if args.wait_for_quiet else None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-meaning-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        shape = args.shape
        tokenizer, vocab, _ = gpt2_tokenizer()
        words = word_list(vocab)
        log(f"writing a random model {asdict(shape)} and a calibrated SAE as gpt2-small / gpt2-small-res-jb ...")
        start = time.perf_counter()
        world = write_world(work / "hf_home", shape, args.sae_l0, args.seed, words)
        log(f"  written in {time.perf_counter() - start:.0f} s; {world['sae_l0_calibration']:g} features per token")
        results: dict[str, Any] = {
            "config": {"sizes": args.sizes, "groups": list(GROUPS), "seed": args.seed, "quick": args.quick,
                       "words_per_prompt": [MIN_WORDS, MAX_WORDS], "word_list_size": len(words)},
            "machine": machine(), "world": world, "waited_for_quiet": quiet,
            "load_average": [round(os.getloadavg()[0], 2), None], "rows": [],
        }
        for n in args.sizes:
            results["rows"].append(bench_size(n, world, work, args.seed + n, words, tokenizer, not args.no_warm,
                                              args.profile, log))
        results["load_average"][1] = round(os.getloadavg()[0], 2)
        results["git_commit"] = results["rows"][-1]["cold"].get("git_commit")
        results["targets"] = evaluate_targets(results["rows"])
        write_results(args.out, "bench_meaning_quick" if args.quick else "bench_meaning", results, log)
        return results
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def write_results(out: Path, stem: str, results: dict[str, Any], log: Callable[[str], None]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(results, indent=1), encoding="utf-8")
    paths[1].write_text(table, encoding="utf-8")
    print(table)
    others = [r["cold"]["others_cpu_share"] or 0.0 for r in results["rows"]]
    if max(others) > CONTENTION_WARNING:
        print(f"warning: other processes used up to {max(others):.0%} of the cores during a run; timings are noisy")
    log(f"wrote {paths[0]} and {paths[1]}")
    return paths


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
