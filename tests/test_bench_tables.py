"""The float32-vs-bfloat16 table (bench/performance_tables.py) and bench_steering.py's several dtypes.

The table is read by people deciding whether bfloat16 is worth it, so its numbers must be the JSONs'
numbers and its ratios the right way up (float32's time over bfloat16's: above 1x bfloat16 is faster).
The fake results below copy the structure of real runs of the three benchmarks (the keys the table
reads, nested as those scripts write them); the last test makes a real one with bench_steering.py's own
``run`` on a tiny world, so a change of that structure breaks a test here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def tables():
    return _bench("performance_tables")


def _machine(flags: list[str] | None, threads: int = 2) -> dict[str, Any]:
    return {"cpu": "AMD EPYC", "cores": 2, "cores_available": 2, "memory_gb": 23.5, "torch_threads": threads,
            "bf16_instructions": flags, "torch_cpu_capability": "AVX2", "gpu": None, "platform": "Linux",
            "versions": {"torch": "2.13.0+cpu"}}


def _run(seconds: float, prompts: int, tokens: int) -> dict[str, Any]:
    return {"seconds": seconds, "prompts": prompts, "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1)}


def encoding_json(flags: list[str] | None = None, reduced: bool = True) -> dict[str, Any]:
    """bench_encoding.py's result: float32 (c) on 12 prompts; bfloat16 once on the first 6 (emulated)."""
    data = {
        "argv": ["--quick"], "started": "2026-12-03T18:47:30+0000", "load_average_start": [3.38, 2.71, 2.06],
        "machine": _machine([] if flags is None else flags, threads=1),
        "config": {"quick": True, "prompts": 12, "device": "cpu", "dtype": "bfloat16", "batch_size": 16},
        "speed": {"pipeline": {**_run(1.2, 12, 480), "all_runs_seconds": [1.1, 1.2, 1.3]}},
        "load_average_end": [4.5, 3.0, 2.5], "finished": "2026-12-03T19:00:00+0000",
        "other_processes_cpu_share": {"pipeline": 0.25, "reduced": 0.5, "naive": 0.1},
    }
    if reduced:
        data["reduced"] = {"dtype": "bfloat16", "emulated": not flags,
                           "pipeline": {**_run(30.0, 6, 240), "all_runs_seconds": [30.0]},
                           "float32_same_prompts": _run(0.6, 6, 240), "speedup_vs_float32": 0.02}
    return data


def mining_json(dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, Any]:
    """bench_mining.py's result: per dtype a milestone row (one_pass) and the final row of the pass."""
    speed = {"float32": 200.0, "bfloat16": 4.0}
    runs = []
    for d in dtypes:
        runs.append({"dtype": d, "tokens": 250, "seconds": 250 / speed[d] / 2, "tokens_per_second": 2 * speed[d],
                     "peak_rss_mb": 1400.0, "one_pass": True})
        runs.append({"dtype": d, "tokens": 500, "windows": 4, "seconds": 500 / speed[d], "tokens_per_second": speed[d],
                     "rescore": {"seconds": 1.5, "windows": 4} if d == "bfloat16" else None,
                     "peak_rss_mb": 1479.0, "requested_tokens": 500, "one_pass": True,
                     "other_processes_cpu_share": {"float32": 0.89, "bfloat16": 0.81}[d]})
    return {"argv": ["--quick"], "started": "2026-12-03T19:01:00+0000", "load_average_start": [0.98, 1.0, 1.0],
            "machine": _machine([]), "config": {"sizes": [250, 500], "threads": 1, "dtypes": list(dtypes)},
            "corpus": {"documents": 1}, "runs": runs, "comparisons": [],
            "load_average_end": [1.26, 1.1, 1.0], "finished": "2026-12-03T19:05:00+0000"}


def steering_json(flags: list[str] | None = None) -> dict[str, Any]:
    """bench_steering.py's result with two dtypes: one timing entry per (workload, dtype)."""
    per = {("ablation", "float32"): 0.5, ("ablation", "bfloat16"): 2.0,
           ("steering", "float32"): 0.3, ("steering", "bfloat16"): 0.12}
    timings = [{"workload": w, "dtype": d, "batches": 4, "positions": 889, "interventions": 21,
                "seconds_per_intervention": {"straightforward": 3 * s, "project": s}, "speedup": 3.0,
                "identical": True, "profile": {}} for (w, d), s in per.items()]
    return {"machine": _machine([] if flags is None else flags, threads=1), "dtype": "float32, bfloat16",
            "dtypes": ["float32", "bfloat16"], "repeats": 1, "started": "2026-12-03T18:51:04+0000",
            "load_average": [5.78, 6.1], "timings": timings, "finished": "2026-12-03T19:10:00+0000"}


def _write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def _cells(rows, bench: str) -> list[list[str]]:
    return [r.cells() for r in rows if r.bench.startswith(bench)]


def test_numbers_ratios_and_emulated_wording(tables, tmp_path):
    _write(tmp_path, "bench_encoding_quick.json", encoding_json())
    _write(tmp_path, "bench_mining_quick_float32_bfloat16.json", mining_json())
    _write(tmp_path, "bench_steering_quick.json", steering_json())
    rows, read = tables.rows_for(tmp_path, quick=True)
    assert len(read) == 3

    [enc] = _cells(rows, "encoding")
    assert enc[1:6] == ["tokens/s", "400", "8.00", "0.02x (50x slower)", "none: emulated"]
    assert "float32 on bfloat16's 6 prompts, timed right after it (400 tokens/s)" in enc[7]
    assert "other programs used 25% (float32) and 50% (bfloat16) of the cores" in enc[7]
    assert enc[6] == "2026-12-03 18:47; AMD EPYC; 1 thread; load 3.38 -> 4.50"

    [mine] = _cells(rows, "corpus mining")  # the final row of each pass, not its milestone
    assert mine[2:5] == ["200", "4.00", "0.02x (50x slower)"]
    assert "500 tokens" in mine[7] and "re-score took 1.5 s" in mine[7]
    assert "89% (float32) and 81% (bfloat16)" in mine[7] and mine[7].endswith("one dtype after the other")
    assert mine[6] == "2026-12-03 19:01; AMD EPYC; 1 thread; load 0.98 -> 1.26"

    steer = _cells(rows, "Chapter 4")
    assert [c[0].split(": ", 1)[1] for c in steer] == ["ablation", "steering"]
    assert steer[0][2:5] == ["0.500", "2.000", "0.25x (4x slower)"]
    assert steer[1][2:5] == ["0.300", "0.120", "2.5x"]  # faster than float32: no slow-down words
    assert steer[0][6] == "2026-12-03 18:51; AMD EPYC; 1 thread; load 5.78 -> 6.10"
    assert steer[0][7] == "889 text positions, 21 interventions; (a) = (b) bit for bit in each dtype"

    text = tables.markdown(rows, read, quick=True)
    assert text.count("\n| ") == 1 + 4  # header and 4 rows, each on its own line
    assert "`bench_mining_quick_float32_bfloat16.json`" in text


def test_encoding_ratio_is_explained_only_when_float32_was_timed_apart(tables, tmp_path):
    data = encoding_json()
    data["reduced"]["float32_same_prompts"] = {k: data["speed"]["pipeline"][k] for k in data["reduced"]["float32_same_prompts"]}
    _write(tmp_path, "bench_encoding.json", data)
    [enc] = _cells(tables.rows_for(tmp_path, quick=False)[0], "encoding")
    assert "timed right after" not in enc[7] and enc[7].endswith("; interleaved")


def test_native_flags_and_unknown_are_named(tables, tmp_path):
    _write(tmp_path, "bench_encoding.json", encoding_json(flags=["amx_bf16", "avx512_bf16"]))
    _write(tmp_path, "bench_steering.json", steering_json(flags=["amx_bf16", "avx512_bf16"]))
    rows, _ = tables.rows_for(tmp_path, quick=False)
    assert {r.bf16 for r in rows if r.bf16 != "-"} == {"native: amx_bf16, avx512_bf16"}
    assert tables.bf16_words({"machine": {"bf16_instructions": None}}) == "unknown"
    assert tables.bf16_words({"machine": {"bf16_instructions": []}}) == "none: emulated"


def test_missing_results_give_a_row_that_names_the_command(tables, tmp_path):
    _write(tmp_path, "bench_encoding_quick.json", encoding_json(reduced=False))
    _write(tmp_path, "bench_mining_quick.json", mining_json(("float32",)))
    rows, read = tables.rows_for(tmp_path, quick=True)
    assert [p.name for p in read] == ["bench_encoding_quick.json", "bench_mining_quick.json"]
    [enc] = _cells(rows, "encoding")
    assert enc[2:4] == ["400", "not run"] and "bfloat16 not run: `python bench/bench_encoding.py --quick`" in enc[7]
    [mine] = _cells(rows, "corpus mining")
    assert mine[2:4] == ["200", "not run"] and "--dtype float32 bfloat16 --quick`" in mine[7]
    [steer] = _cells(rows, "Chapter 4")
    assert steer[7] == "not run: `python bench/bench_steering.py --dtype float32 bfloat16 --quick`"
    # a full (not --quick) table reads no quick result
    rows, read = tables.rows_for(tmp_path, quick=False)
    assert read == [] and all(r.note.startswith("not run: `") for r in rows)


def test_latest_prefers_the_newest_run_with_both_dtypes(tables, tmp_path):
    import os

    both = _write(tmp_path, "bench_mining_float32_bfloat16.json", mining_json())
    only = _write(tmp_path, "bench_mining.json", mining_json(("float32",)))
    _write(tmp_path, "bench_mining_quick_float32_bfloat16.json", mining_json())
    os.utime(both, (1_000, 1_000))
    os.utime(only, (2_000, 2_000))  # newer, but float32 only
    assert tables.latest(tmp_path, "bench_mining") == both
    both.unlink()
    assert tables.latest(tmp_path, "bench_mining") == only
    assert tables.latest(tmp_path, "bench_steering") is None


DOC = """# Title

Paragraph before, kept as it is.

## float32 and bfloat16 side by side

<!-- dtype-table:start -->
old table
<!-- dtype-table:end -->

Paragraph after, kept as it is.
"""


def test_write_replaces_only_the_marked_block_and_is_idempotent(tables, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "bench_steering.json", steering_json())
    docs = [tmp_path / "a.md", tmp_path / "b.md"]
    for d in docs:
        d.write_text(DOC)
    args = ["--results", str(results), "--write", "--files", *map(str, docs)]
    assert tables.main(args) == 0
    first = docs[0].read_text()
    assert first == docs[1].read_text()
    head, rest = first.split("<!-- dtype-table:start -->\n")
    block, tail = rest.split("<!-- dtype-table:end -->")
    assert DOC.startswith(head) and DOC.endswith(tail)
    assert "old table" not in block and "| Chapter 4 interventions, (b): ablation |" in block
    assert tables.main(args) == 0  # a second run changes nothing
    assert docs[0].read_text() == first
    assert "already up to date" in capsys.readouterr().out

    # a file without the markers: an error, and neither file is touched
    docs[1].write_text("no markers here\n")
    _write(results, "bench_steering.json", steering_json(flags=["avx512_bf16"]))
    assert tables.main(args) == 2
    assert docs[0].read_text() == first and docs[1].read_text() == "no markers here\n"


# --- bench_steering.py with two dtypes ----------------------------------------------------------------


def test_steering_table_has_a_dtype_column_and_a_ratio_only_with_two_dtypes():
    steering = _bench("bench_steering")
    data = steering_json()
    data["timings"] = steering.add_dtype_ratios(data["timings"])
    assert data["timings"][1]["speed_vs_float32"]["project"] == pytest.approx(0.25)
    assert data["timings"][3]["speed_vs_float32"]["project"] == pytest.approx(2.5)
    text = steering.markdown(data)
    assert "| dtype |" in text and "(b) speed vs float32 |" in text
    assert "| ablation | bfloat16 | 4 | 889 | 21 | 6.000 | 2.000 | 3.0x | bit for bit | 0.25x |" in text
    single = {**data, "dtype": "float32", "dtypes": ["float32"], "timings": data["timings"][::2]}
    text = steering.markdown(single)
    assert "speed vs float32" not in text and "| ablation | float32 |" in text
    assert steering.parse_args([]).dtype == ["float32"]
    assert steering.parse_args(["--dtype", "float32", "bfloat16"]).dtype == ["float32", "bfloat16"]


def test_steering_run_times_both_dtypes_interleaved_and_feeds_the_table(tmp_path, monkeypatch, tables):
    """bench_steering.py's own ``run`` on a tiny random world (2 layers of width 32, 97 tokens) in float32
    and bfloat16: the JSON it writes holds an entry per dtype, (a) = (b) within each, and the table reads it."""
    steering, encoding = _bench("bench_steering"), _bench("bench_encoding")
    from mechinterp.causal.intervene import make_batches
    from mechinterp.core.encoding import Tokenized

    shape = encoding.ModelShape(n_layers=2, d_model=32, n_heads=4, d_mlp=64, d_vocab=97, n_ctx=64)
    base = encoding.build_world(shape, d_sae=48, hook_layer=1, seed=0, l0=6.0)
    order = []

    def tiny(args, worlds, dtypes, home):
        by_dtype = {}
        for d in dtypes:
            world = encoding.world_in_dtype(base, d)
            batches = make_batches(world.loaded, Tokenized(steering.random_prompts(5, 3, 10, 97, world.bos, 1),
                                                           n_skip=1), 4)
            by_dtype[d] = steering.ablation_workload("tiny ablation", world.loaded, batches, 3, 2, [5, 7])
        return [by_dtype]

    real_run = steering.run_method
    monkeypatch.setattr(steering, "workloads_by_dtype", tiny)
    monkeypatch.setattr(steering, "run_method", lambda m, w: order.append(w.loaded.dtype) or real_run(m, w))
    out = tmp_path / "results"
    argv = ["--quick", "--dtype", "float32", "bfloat16", "--repeats", "2", "--no-profile", "--out", str(out), "--quiet"]
    assert steering.main(argv) == 0
    assert order == ["float32", "float32", "bfloat16", "bfloat16"] * 2  # every repeat runs every dtype
    data = json.loads((out / "bench_steering_quick.json").read_text())
    assert [t["dtype"] for t in data["timings"]] == ["float32", "bfloat16"] and data["dtypes"] == ["float32", "bfloat16"]
    assert data["argv"] == argv and data["started"] <= data["finished"]
    assert all(t["identical"] for t in data["timings"])
    f32, bf16 = (t["seconds_per_intervention"]["project"] for t in data["timings"])
    assert data["timings"][1]["speed_vs_float32"]["project"] == pytest.approx(f32 / bf16)
    [row] = tables.rows_for(out, quick=True)[0][2:]
    assert row.float32 == f"{f32:.3f}" and row.bfloat16 == f"{bf16:.3f}"
    assert row.speed.startswith(f"{f32 / bf16:.2g}x")
