"""Chapter 2 - Attach meanings to features by contrasting prompt sets.

Which SAE features fire for happy statements and not for neutral ones? Every group of prompts in
``prompts/`` (one ``<group>.txt`` per group) is compared with the baseline group, feature by feature:
Mann-Whitney U test (Wilcoxon signed-rank with ``--paired``), AUROC, effect size, Benjamini-Hochberg
q-values over all features, and a check that each finding replicates on held-out prompts. Features
that fire in nearly every prompt of every group ("always on") are listed separately and not ranked.

A difference is not yet a meaning: prompt sets also differ in length, stray words and punctuation.
So the script first checks how each group's prompts differ from the baseline's, then asks where each
significant, replicated feature's difference comes from (its peak tokens and positions, re-tests
within equal lengths, tokens and positions, the token put into baseline prompts) and gives it one
verdict: concept, lexical, positional, length or context.

Run:
    python MechInterpFeatureMeaning.py                      # prompts/happy.txt, angry.txt vs baseline.txt
    python MechInterpFeatureMeaning.py --paired             # line i of each file pairs with line i of baseline
    python MechInterpFeatureMeaning.py --groups happy --agg mean
    python MechInterpFeatureMeaning.py --demo               # synthetic toy world with planted features

Prints the design checks, then per group the top features with q, AUROC, firing rates and verdict,
and writes to Images/: feature_stats.csv, feature_evidence.csv, design_checks.csv (+design_pairs.csv
with --paired), always_on_features.csv, MI2.png (+MI2.csv), MI3.png (+MI3.csv), MI4_<group>.png, and
MechInterpFeatureMeaning_run.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mechinterp.cli import (
    ArgumentParser,
    add_common_args,
    fraction,
    make_logger,
    output_folder,
    positive_int,
    prompt_folder,
    run_cli,
    source_options,
)
from mechinterp.core import constants
from mechinterp.core.errors import UserError
from mechinterp.core.io import OutputFolder
from mechinterp.core.loading import neuronpedia_url
from mechinterp.core.pipeline import EncodeOptions, ModelInfo, Summaries, summarise_prompts
from mechinterp.core.prompts import PromptSets, load_prompt_sets
from mechinterp.core.provenance import PROVENANCE_COLUMNS
from mechinterp.core.records import RunRecord
from mechinterp.core.source import resolve_source
from mechinterp.core.tables import WIDTH, plural, print_table, print_wrapped
from mechinterp.meaning.confounds import ConfoundSettings, DesignReport
from mechinterp.meaning.contrast import (
    DESIGN_HEADER,
    EVIDENCE_HEADER,
    MeaningOptions,
    MeaningResult,
    PromptEncoder,
    contrast_groups,
    design_rows,
    evidence_rows,
)
from mechinterp.meaning.report import group_heatmaps, group_mean_overview, volcano

MIN_PROMPTS = 5  # per group (per split with --holdout): fewer cannot reach significance after FDR
AUTO_HOLDOUT_MIN = 20  # the held-out split is on by default when every group has this many prompts
LABELLED_IN_VOLCANO = 8
PAIRS_SHOWN = 3  # pairs printed per group with --paired (all of them are in DESIGN_PAIRS_CSV)
# Output files of the confound checks (beside constants.FEATURE_STATS_CSV).


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Chapter 2: find the SAE features that distinguish each prompt group from the baseline.",
    )
    data = parser.add_argument_group("prompts")
    data.add_argument(
        "--prompts", type=Path, default=None, metavar="DIR",
        help="folder with one <group>.txt per group (default: prompts/ beside the script; the demo's own with --demo)",
    )
    data.add_argument("--groups", nargs="+", default=None, metavar="NAME", help="use only these groups (default: all)")
    data.add_argument("--baseline", default="baseline", help="the reference group every other group is compared with (default: %(default)s)")
    data.add_argument(
        "--duplicates", choices=("drop", "error"), default="drop",
        help="a prompt listed twice: warn and keep the first occurrence, or stop with an error (default: %(default)s)",
    )
    analysis = parser.add_argument_group("statistics")
    analysis.add_argument(
        "--agg", choices=("max", "mean"), default="max",
        help="summarise each prompt by the feature's max or mean activation over its tokens, BOS excluded (default: %(default)s)",
    )
    analysis.add_argument("--alpha", type=fraction, default=0.05, help="false discovery rate for q-values (default: %(default)s)")
    analysis.add_argument(
        "--holdout", type=fraction, default=None, metavar="FRACTION",
        help=f"share of each group held out to re-test findings (default: 0.5 when every group has at least "
        f"{AUTO_HOLDOUT_MIN} prompts, else off)",
    )
    analysis.add_argument("--no-holdout", action="store_true", help="test on all prompts, without replication")
    analysis.add_argument("--seed", type=int, default=0, help="seed of the discovery/held-out split (default: %(default)s)")
    analysis.add_argument(
        "--always-on", type=fraction, default=0.9, metavar="FRACTION",
        help="a feature firing in at least this share of the prompts of every group is 'always on' (default: %(default)s)",
    )
    analysis.add_argument("--top-k", type=positive_int, default=10, help="features per group in tables and figures (default: %(default)s)")
    analysis.add_argument(
        "--paired", action="store_true",
        help="line i of every group file belongs with line i of the baseline file (written line-matched, "
        "as the shipped prompts are): test with the Wilcoxon signed-rank test on the pairs and list the "
        "tokens that differ within each pair; every file must have as many prompts as the baseline",
    )
    speed = parser.add_argument_group("speed")
    speed.add_argument("--batch-size", type=positive_int, default=None, help="prompts per forward pass (default: 16 on CPU; on a GPU as many as fit in half its free memory, at most 512)")
    speed.add_argument(
        "--no-cache", action="store_true",
        help="do not read or write the activation cache (.cache/activations, or $MECHINTERP_CACHE/activations)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.holdout is not None and args.no_holdout:
        parser.error("--holdout and --no-holdout contradict each other; pick one")
    return args


def choose_holdout(args: argparse.Namespace, sizes: dict[str, int]) -> float:
    if args.no_holdout:
        return 0.0
    if args.holdout is not None:
        return args.holdout
    return 0.5 if min(sizes.values()) >= AUTO_HOLDOUT_MIN else 0.0


STATS_HEADER = [
    "group", "feature", "rank", "direction", "mean_group", "mean_baseline", "frac_active_group",
    "frac_active_baseline", "auroc", "effect_size", "cohens_d", "p_value", "q_value", "test",
    "holdout_auroc", "holdout_q_value", "replicated", "verdict", "evidence", "always_on", "neuronpedia_url",
    "alpha", *PROVENANCE_COLUMNS,
]


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    log = make_logger(args)
    with output_folder(args) as out:
        record = RunRecord(__file__, argv, vars(args))
        source = resolve_source(source_options(args), log)
        folder = prompt_folder(args)
        sets, holdout = load_sets(args, folder)
        texts, labels = sets.flat()

        encode = EncodeOptions(batch_size=args.batch_size, use_cache=not args.no_cache, quiet=args.quiet)
        summaries = summarise_prompts(source, texts, labels, encode, log)
        record.add_seconds(summaries.seconds)
        options = MeaningOptions(agg=args.agg, alpha=args.alpha, holdout=holdout, seed=args.seed,
                                 always_on=args.always_on, paired=args.paired)
        injected: list[dict] = []
        with record.timed("statistics"):  # includes encoding the token-injection test's edited prompts
            result = contrast_groups(summaries.aggregates, labels, list(sets.groups), sets.baseline, options,
                                     texts=texts, encode=injection_encoder(source, args, log, injected, summaries))

        written = write_tables(out, sets, result, summaries.info, args.alpha)
        written += write_confound_tables(out, result, options.confounds)
        print_summary(args, sets, result, summaries)
        with record.timed("figures"):
            written += make_figures(args, out, sets, result, summaries)
        record.wrote(*written)
        record.update(**run_facts(args, folder, sets, result, summaries), **confound_facts(result, options, injected))
        path = record.write(out)
        print(f"\nWrote {len(written) + 1} files to {out.path}/")
        print_wrapped(", ".join(p.name for p in [*written, path]))
    return 0


def load_sets(args: argparse.Namespace, folder: Path) -> tuple[PromptSets, float]:
    """The prompt sets, checked for the statistics (and for pairing), and the held-out share to use."""
    min_needed = MIN_PROMPTS * (2 if not args.no_holdout and args.holdout is not None else 1)
    sets = load_prompt_sets(folder, args.groups, args.baseline, min_needed, args.duplicates)
    sizes = {g: len(p) for g, p in sets.groups.items()}
    if args.paired:
        if sets.notes:
            raise UserError(f"--paired pairs line i of each file with line i of {args.baseline}.txt, so no line may "
                            f"be dropped, but {sets.notes[0]}; make every line unique")
        uneven = [g for g in sets.contrasts if sizes[g] != sizes[sets.baseline]]
        if uneven:
            raise UserError(
                f"--paired needs as many prompts in each group as in the baseline ({sizes[sets.baseline]}), but "
                + ", ".join(f"{g} has {sizes[g]}" for g in uneven) + "; fix the files or drop --paired"
            )
    holdout = choose_holdout(args, sizes)
    if holdout and min(round(n * holdout) for n in sizes.values()) < MIN_PROMPTS:
        smallest = min(sizes, key=sizes.get)
        raise UserError(
            f"with --holdout {holdout:g}, group {smallest!r} keeps only {round(sizes[smallest] * holdout)} "
            f"prompts for re-testing; the statistics need at least {MIN_PROMPTS} per split (add prompts or "
            "use --no-holdout)"
        )
    return sets, holdout


def injection_encoder(source, args: argparse.Namespace, log, runs: list[dict], first: Summaries) -> PromptEncoder:
    """The token-injection test's model access: edited prompts go through the same cached pipeline, so a
    rerun loads the model only for edited prompts it has never seen. Each call's cache use goes to ``runs``
    (the summaries themselves are not kept: they hold the model when it was loaded)."""
    options = EncodeOptions(batch_size=args.batch_size, use_cache=not args.no_cache, quiet=args.quiet)

    def encode(texts: list[str]):
        done = summarise_prompts(source, texts, ["edited"] * len(texts), options,
                                 lambda msg: log(f"token injection: {msg}"), loaded=first.loaded)
        runs.append(dict(hits=done.cache_hits, misses=done.cache_misses, model_loaded=done.loaded is not None,
                         seconds=done.seconds))
        return done.aggregates

    return encode


def _r(x: float) -> float:
    return round(float(x), 6)


def write_tables(out: OutputFolder, sets: PromptSets, result: MeaningResult, info: ModelInfo, alpha: float) -> list[Path]:
    """feature_stats.csv (every tested feature of every group) and always_on_features.csv.

    Every row carries the model, SAE and hook (so Chapters 3, 4 and 6 can refuse a file made with another
    SAE) and the false discovery rate the significance was judged at.
    """
    always = set(result.always_on.tolist())
    neuronpedia_id, stamp = info.neuronpedia_id, info.provenance.row()
    rows = []
    for group, finding in result.findings.items():
        c = finding.contrast
        rank_of = finding.rank_of_position()
        for pos in range(len(c.tested)):
            f = int(c.tested[pos])
            h, v = finding.replication.get(f), finding.verdicts.get(f)
            rows.append([
                group, f, rank_of.get(pos, ""), {1: "up", -1: "down", 0: "none"}[int(c.direction[pos])],
                _r(c.mean_group[pos]), _r(c.mean_baseline[pos]), _r(c.frac_group[pos]), _r(c.frac_baseline[pos]),
                _r(c.auroc[pos]), _r(c.effect_size[pos]), _r(c.cohens_d[pos]), f"{c.p_value[pos]:.6g}",
                f"{c.q_value[pos]:.6g}", result.test, _r(h.auroc) if h else "", f"{h.q_value:.6g}" if h else "",
                ("yes" if h.replicated else "no") if h else "not tested", v.verdict if v else "",
                v.evidence if v else "", "yes" if f in always else "no", neuronpedia_url(neuronpedia_id, f), alpha,
                *stamp,
            ])
    groups = list(sets.groups)
    return [
        out.write_csv(constants.FEATURE_STATS_CSV, STATS_HEADER, rows),
        out.write_csv(
            constants.ALWAYS_ON_CSV,
            ["feature", *[f"frac_active_{g}" for g in groups], *[f"mean_{g}" for g in groups], "neuronpedia_url",
             *PROVENANCE_COLUMNS],
            [[int(f), *[_r(result.fired_fraction[g][f]) for g in groups], *[_r(result.means[g][f]) for g in groups],
              neuronpedia_url(neuronpedia_id, int(f)), *stamp] for f in result.always_on],
        ),
    ]


def write_confound_tables(out: OutputFolder, result: MeaningResult, settings: ConfoundSettings) -> list[Path]:
    """design_checks.csv (+ design_pairs.csv when paired) and feature_evidence.csv."""
    designs = [f.design for f in result.findings.values() if f.design is not None]
    written = [out.write_csv(constants.DESIGN_CSV, DESIGN_HEADER, [r for d in designs for r in design_rows(d, settings)])]
    if any(d.pairs is not None for d in designs):
        pairs = [r for d in designs for r in d.pair_rows()]
        written.append(out.write_csv(constants.DESIGN_PAIRS_CSV, DesignReport.PAIR_HEADER, pairs))
    evidence = [r for f in result.findings.values() for r in evidence_rows(f, result.baseline)]
    written.append(out.write_csv(constants.EVIDENCE_CSV, EVIDENCE_HEADER, evidence))
    return written


def confound_facts(result: MeaningResult, options: MeaningOptions, injected: list[dict]) -> dict:
    """What the run record says about the design checks, the controls and the verdicts."""
    findings = result.findings.values()
    return dict(
        test=result.test, paired=options.paired,
        design_warnings={f.group: f.design.warnings for f in findings if f.design},
        verdicts={f.group: f.verdict_counts() for f in findings},
        not_judged={f.group: sorted(set(f.reports) - set(f.verdicts)) for f in findings},
        controls=[
            "design checks: token length (Mann-Whitney, or Wilcoxon signed-rank when paired), tokens in more "
            "prompts of one set (one-sided Fisher, BH over token types), sentence endings (two-sided Fisher)",
            "each significant ranked feature re-tested on all prompts of both sets within strata (van Elteren): "
            "equal token length; with / without its top peak token; that token at the same position; prompts "
            "that reach / do not reach its peak position",
            "generalisation: the feature must still separate the prompts without its top distinctive words",
            f"token injection: the top peak token put in place of a word of the other set's prompts, "
            f"{result.injection_texts} edited prompts encoded ("
            f"{sum(r['hits'] for r in injected)} from the cache, {sum(r['misses'] for r in injected)} new)",
        ],
        injection=dict(texts=result.injection_texts, cache_hits=sum(r["hits"] for r in injected),
                       cache_misses=sum(r["misses"] for r in injected),
                       model_loaded=any(r["model_loaded"] for r in injected),
                       seconds={k: round(sum(r["seconds"].get(k, 0.0) for r in injected), 4)
                                for k in ("load", "encode", "cache")}),
        confound_settings=asdict(options.confounds),
    )


def run_facts(args: argparse.Namespace, folder: Path, sets: PromptSets, result: MeaningResult,
              summaries: Summaries) -> dict:
    """What the run record says about inputs, counts and filtering."""
    info, findings = summaries.info, result.findings
    return dict(
        model=info.model_label, sae=info.sae_label, hook=info.hook_name, d_sae=info.d_sae,
        prompts_folder=str(folder), prompt_file_sha256=sets.file_hashes,
        n_prompts={g: len(p) for g, p in sets.groups.items()},
        tokens_in_prompts=summaries.aggregates.n_tokens, tokens_encoded=summaries.tokens_encoded,
        cache_hits=summaries.cache_hits, cache_misses=summaries.cache_misses,
        model_loaded=summaries.loaded is not None, seed=args.seed, holdout=result.holdout,
        always_on_features=[int(f) for f in result.always_on],
        filtered=[
            "BOS position and padding excluded from every per-prompt summary",
            "features that never fired in either group were not tested: "
            + ", ".join(f"{g}: {fd.contrast.n_never_fired}" for g, fd in findings.items()),
            f"{len(result.always_on)} always-on features (fire in >= {args.always_on:g} of prompts in every "
            "group) not ranked and not judged",
            "verdicts only for features significant in discovery that replicated on the held-out prompts (or, "
            "without a held-out split, were not re-tested); the others keep an empty verdict",
            *sets.notes,
        ],
        discoveries={g: fd.n_significant(args.alpha) for g, fd in findings.items()},
    )


def print_summary(args: argparse.Namespace, sets: PromptSets, result: MeaningResult, summaries: Summaries) -> None:
    info, always = summaries.info, result.always_on
    print(f"\n{info.title}")
    n_tokens = summaries.aggregates.n_tokens
    print_wrapped(
        f"{sum(len(p) for p in sets.groups.values())} prompts, {n_tokens} text tokens "
        f"(BOS and padding excluded); per-prompt {args.agg} activation; {result.test} test; "
        f"cache: {summaries.cache_hits} hits, {summaries.cache_misses} misses"
    )
    if len(always):
        shown = ", ".join(f"#{f}" for f in always[:12]) + (" ..." if len(always) > 12 else "")
        print_wrapped(f"{len(always)} always-on features (fire in >= {args.always_on:.0%} of prompts of every group), "
              f"listed in always_on_features.csv and not ranked: {shown}")
    print_design(result)
    for group in result.findings:
        print_group(args, sets, result, group)
    print()
    if info.neuronpedia_id:
        print_wrapped(f"Each feature's page: {constants.NEURONPEDIA_BASE}/{info.neuronpedia_id}/<feature> "
              f"(every link is in {constants.FEATURE_STATS_CSV})")
    print_wrapped(f"Rank = smallest q first, ties broken by larger |effect size|, then larger mean difference. "
          f"'replic.' = same direction and q < {args.alpha:g} on held-out prompts ('-': not re-tested, "
          f"because not significant in discovery or no held-out split).")
    print_wrapped("Verdicts (for significant features that replicated, or with no held-out split for every "
                  "significant feature): concept = several words of the group "
                  "carry it and it survives the length, token and position controls; lexical = one token carries "
                  "it; positional = one absolute position; length = prompt length; context = none of these, but "
                  f"not a concept either. The evidence for each is in {constants.EVIDENCE_CSV}.")


_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def print_tokens_wrapped(text: str, indent: str = "  ") -> None:
    """Like print_wrapped, but never breaks a line inside a quoted token such as ' seated'."""
    protected = _QUOTED.sub(lambda m: m.group(0).replace(" ", "\0"), text)
    print(textwrap.fill(protected, WIDTH, subsequent_indent=indent, break_on_hyphens=False).replace("\0", " "))


def print_design(result: MeaningResult) -> None:
    """The "your prompt sets differ in ..." section: how each group's prompts differ from the baseline's."""
    print()
    print_wrapped("Design checks: how each group's prompts differ from the baseline's, before any feature is "
                  "looked at (a group's own concept words are expected among the tokens; anything else is "
                  f"a confound a feature can pick up; details in {constants.DESIGN_CSV}):")
    for finding in result.findings.values():
        design = finding.design
        for line in design.summary_lines():
            print_tokens_wrapped(line, "      " if line.startswith("  - ") else "  ")
        for pair in (design.pairs or [])[:PAIRS_SHOWN]:
            print_tokens_wrapped(f"    pair {pair.line + 1}: only in {design.group}: "
                                 f"{' '.join(map(repr, pair.only_group)) or '-'}; only in {design.baseline}: "
                                 f"{' '.join(map(repr, pair.only_baseline)) or '-'}", "      ")
        if design.pairs and len(design.pairs) > PAIRS_SHOWN:
            print(f"    ... every pair is in {constants.DESIGN_PAIRS_CSV}")


def print_group(args: argparse.Namespace, sets: PromptSets, result: MeaningResult, group: str) -> None:
    """One group's table of top features (with verdicts), and why the verdicts were given."""
    finding, holdout = result.findings[group], result.holdout
    c = finding.contrast
    split = (f"discovery on {c.n_group} vs {c.n_baseline} prompts, re-tested on the held-out "
             f"{holdout:.0%}" if holdout else f"{c.n_group} vs {c.n_baseline} prompts, no held-out split")
    print()
    print_wrapped(f"=== {group} vs {sets.baseline}: {split}" + (" (paired line by line)" if args.paired else ""))
    print_wrapped(f"{plural(finding.n_significant(args.alpha), 'feature')} with q < {args.alpha:g} (of {len(c.tested)} tested; "
          f"{c.n_never_fired} never fired in either group and were skipped)")
    rows, examples = [], {}
    for ranked in finding.top(args.top_k):
        pos, h, v = ranked.position, ranked.replication, finding.verdicts.get(ranked.feature)
        rows.append([
            ranked.rank, ranked.feature, "up" if c.effect_size[pos] > 0 else "down", f"{c.q_value[pos]:.2g}",
            f"{c.auroc[pos]:.2f}", f"{c.frac_group[pos]:.0%}", f"{c.frac_baseline[pos]:.0%}",
            ("yes" if h.replicated else "no") if h else "-", v.verdict if v and v.verdict else "-",
        ])
        if v and v.verdict and v.verdict not in examples:
            examples[v.verdict] = v
    print_table(["rank", "feature", "dir", "q", "AUROC", f"in {group}", f"in {sets.baseline}", "replic.", "verdict"],
                rows)
    counts = {k: n for k, n in finding.verdict_counts().items() if n}
    if counts:
        n = sum(counts.values())
        judged = (plural(n, "significant, replicated feature") if holdout
                  else plural(n, "significant feature") + " (no held-out split, so none re-tested)")
        print_wrapped(f"Verdicts of the {judged}: "
                      + ", ".join(f"{n} {k}" for k, n in counts.items())
                      + ("" if counts.get("concept") else " (none passed as a concept)")
                      + "; why, one example of each:")
        for v in examples.values():
            print_tokens_wrapped(f"  #{v.feature} {v.verdict}: {v.evidence}", "    ")
    print_always_on_differences(finding, result.always_on, args.alpha, group, sets.baseline)


def print_always_on_differences(finding, always, alpha: float, group: str, baseline: str) -> None:
    """The always-on features whose strength differs between the groups: not ranked, but not hidden."""
    positions = finding.always_on_differences(always, alpha)
    if not positions:
        return
    c = finding.contrast
    print()
    print_wrapped(f"Always-on features that also differ ({len(positions)}; not ranked, because they fire in nearly every "
                  f"prompt, but their strength differs; mean = mean of the per-prompt summary):")
    print_table(
        ["feature", "dir", "q", "AUROC", f"mean {group}", f"mean {baseline}"],
        [[int(c.tested[p]), "up" if c.effect_size[p] > 0 else "down", f"{c.q_value[p]:.2g}", f"{c.auroc[p]:.2f}",
          f"{c.mean_group[p]:.3g}", f"{c.mean_baseline[p]:.3g}"] for p in positions],
    )


def make_figures(args: argparse.Namespace, out: OutputFolder, sets: PromptSets, result: MeaningResult,
                 summaries: Summaries) -> list[Path]:
    agg, info, always, index = summaries.aggregates, summaries.info, result.always_on, result.index
    always_list = always.tolist()
    written = [out.save_figure(group_mean_overview(result.means, always_list, info.title, args.agg), constants.MI2_PNG)]
    active = np.flatnonzero(np.any(np.stack(list(result.means.values())) > 0, axis=0))
    written.append(out.write_csv(
        constants.MI2_CSV, ["feature", *[f"mean_{g}" for g in sets.groups], "always_on"],
        [[int(f), *[_r(result.means[g][f]) for g in sets.groups], "yes" if f in set(always_list) else "no"]
         for f in active],
    ))
    panels, verdicts, heat_rows = [], [], []
    for group, finding in result.findings.items():
        feats = [r.feature for r in finding.top(args.top_k)]
        rows_idx = np.concatenate([index[group], index[sets.baseline]])
        acts = agg.dense(args.agg, rows_idx, np.array(feats, dtype=int))
        subtitle = f"{plural(finding.n_significant(args.alpha), 'feature')} at q < {args.alpha:g}"
        panels.append((group, subtitle, acts, len(index[group]), feats))
        labels = [finding.verdicts[f].verdict if f in finding.verdicts else "" for f in feats]
        verdicts.append(labels)
        prompts = sets.groups[group] + sets.groups[sets.baseline]
        groups_of = [group] * len(index[group]) + [sets.baseline] * len(index[sets.baseline])
        for r, (prompt, g) in enumerate(zip(prompts, groups_of)):
            for k, f in enumerate(feats):
                heat_rows.append([group, g, prompt, f, labels[k], _r(acts[r, k])])
    if panels and all(p[4] for p in panels):
        fig = group_heatmaps(panels, sets.baseline, info.title, args.agg, verdicts=verdicts)
        written.append(out.save_figure(fig, constants.MI3_PNG))
        written.append(out.write_csv(constants.MI3_CSV, ["panel", "prompt_group", "prompt", "feature", "verdict",
                                                         "activation"], heat_rows))
    for group, finding in result.findings.items():
        c = finding.contrast
        # Label the strongest findings only: labels on non-significant points would invite over-reading.
        labelled = [r.feature for r in finding.top(LABELLED_IN_VOLCANO) if c.q_value[r.position] < args.alpha]
        fig = volcano(c.effect_size, c.q_value, c.tested, labelled, args.alpha, group, sets.baseline, info.title)
        written.append(out.save_figure(fig, constants.MI4_PNG.format(group=group)))
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda a: run(a, argv), args)


if __name__ == "__main__":
    sys.exit(main())
