"""Chapter 3's outputs: the files a run writes, the sentences and tables it prints, its progress lines.

Why it exists: the analysis modules (:mod:`~mechinterp.cards.card`, :mod:`~mechinterp.cards.mining`)
return data; this module turns that data into what a person reads - each card's figure, numbers,
JSON and HTML page, the summary table, the every-feature tables of a mined corpus, the run record's
corpus entry, and the mining pass's progress - so that a notebook gets the data without the files and
a change of wording never touches a number. Nothing here prints: the script prints what it returns.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mechinterp.cards.card import FeatureCard
from mechinterp.cards.family import FamilyCard
from mechinterp.cards.figures import card_figure, corpus_figure, family_figure
from mechinterp.cards.label_report import index_text, label_html, write_label_files
from mechinterp.cards.mining import MiningOptions, MiningResult, Progress
from mechinterp.cards.render import render_family_html, render_html, render_index
from mechinterp.core import constants
from mechinterp.core.features import label_of, name_of, parse_family
from mechinterp.core.figures import png_bytes
from mechinterp.core.io import OutputFolder
from mechinterp.core.progress import Log, progress_bar
from mechinterp.core.provenance import Provenance
from mechinterp.core.tables import plural

# The summary of every card: one row per feature in feature_cards.csv and in the terminal table.
# Densities and firing rates in percent, as the cards and every chapter print them (the header says so).
SUMMARY_COLUMNS = ["feature", "density_sparsity_file_percent", "firing_rate_prompts_percent", "typical_max_activation",
                   "top_peak_token", "top_promoted_token", "neuronpedia_url"]
SUMMARY_HEADINGS = ["feature", "density", "firing rate", "typ. max", "top peak token", "top promoted", "neuronpedia"]

# --- one card's files -----------------------------------------------------------------------------------


def _logits_and_histogram(out: OutputFolder, card: FeatureCard | FamilyCard, name: object) -> list[Path]:
    """MI5_<name>.csv (the promoted and suppressed tokens) and MI5_<name>_hist.csv (the histogram), the
    numbers behind a card's figure, for one feature or a family alike."""
    logits_csv = out.write_csv(
        constants.MI5_CSV.format(feature=name),
        ["direction", "rank", "token_id", "token", "logit_effect"],
        [["promoted", r, x.token_id, x.token, x.value] for r, x in enumerate(card.promoted, 1)]
        + [["suppressed", r, x.token_id, x.token, x.value] for r, x in enumerate(card.suppressed, 1)],
    )
    edges, counts = card.hist_edges, card.hist_counts
    hist_csv = out.write_csv(
        constants.MI5_HIST_CSV.format(feature=name),
        ["bin_low", "bin_high", *counts.keys()],
        [[float(edges[b]), float(edges[b + 1]), *(int(c[b]) for c in counts.values())] for b in range(len(edges) - 1)],
    )
    return [logits_csv, hist_csv]


def write_card(out: OutputFolder, card: FeatureCard, title: str, is_demo: bool, provenance: Provenance) -> list[Path]:
    """MI5_<id>.png with the numbers behind it, and the card as JSON and as a self-contained HTML page;
    with a mined corpus also MI5_<id>_corpus.png and its numbers."""
    feature = card.feature
    fig = card_figure(card, title)
    png = out.save_figure(fig, constants.MI5_PNG.format(feature=feature))
    written = [png, *_logits_and_histogram(out, card, feature)]
    corpus_png = None
    if card.corpus is not None:
        corpus_png, corpus_files = _write_corpus_figure(out, card, title)
        written += corpus_files
    label_png, label_files = write_label_files(out, feature, card.label_scores, title)
    data = card.to_dict() | {"title": title, "provenance": provenance.to_dict()}
    card_json = out.write_json(constants.CARD_JSON.format(feature=feature), data)
    page = out.write_text(constants.CARD_HTML.format(feature=feature),
                          render_html(card, title, is_demo, png_bytes(fig), corpus_png,
                                      label_html(card.label_scores, label_png)))
    return written + label_files + [card_json, page]


def write_family_card(out: OutputFolder, card: FamilyCard, title: str, is_demo: bool,
                      provenance: Provenance) -> list[Path]:
    """A family's card, named by the family (``409+501``): MI5_<name>.png with the numbers behind it (logit
    effects, histogram, one row per member), and the card as JSON and as a self-contained HTML page."""
    name = card.name
    fig = family_figure(card, title)
    png = out.save_figure(fig, constants.MI5_PNG.format(feature=name))
    logits_csv, hist_csv = _logits_and_histogram(out, card, name)
    members_csv = out.write_csv(
        constants.MI5_MEMBERS_CSV.format(feature=name),
        ["feature", "density_sparsity_file_percent", "firing_rate_prompts_percent", "typical_max_activation",
         "tokens_it_carries", "top_promoted_token", "peak_words"],
        [[r.feature, _pct(r.density), _pct(r.firing_rate), r.typical_max, r.carries,
          r.promoted[0].token if r.promoted else "", " ".join(f"{w!r}:{n}" for w, n in r.peak_words)]
         for r in card.rows],
    )
    label_png, label_files = write_label_files(out, name, card.label_scores, title)
    data = card.to_dict() | {"title": title, "provenance": provenance.to_dict()}
    card_json = out.write_json(constants.FAMILY_JSON.format(family=name), data)
    page = out.write_text(constants.FAMILY_HTML.format(family=name),
                          render_family_html(card, title, is_demo, png_bytes(fig), label_html(card.label_scores, label_png)))
    return [png, logits_csv, hist_csv, members_csv, *label_files, card_json, page]


def _write_corpus_figure(out: OutputFolder, card: FeatureCard, title: str) -> tuple[bytes, list[Path]]:
    """MI5_<id>_corpus.png and MI5_<id>_corpus_hist.csv; returns the PNG's bytes (for the page) and the paths."""
    c, feature = card.corpus, card.feature
    # Rendered once, for the file and the page alike (a render is most of a card's time).
    corpus_png = png_bytes(corpus_figure(feature, c, title), dpi=120)
    name = constants.MI5_CORPUS_PNG.format(feature=feature)
    with out.staged(name) as tmp:
        tmp.write_bytes(corpus_png)
    hist_csv = out.write_csv(
        constants.MI5_CORPUS_CSV.format(feature=feature),
        ["bin_low", "bin_high", "tokens", "windows_by_peak"],
        [[edge(c.hist_edges[b]), edge(c.hist_edges[b + 1]), int(c.hist_counts[b]), int(c.window_hist_counts[b])]
         for b in range(len(c.hist_counts))],
    )
    return corpus_png, [out / name, hist_csv]


def edge(x: float) -> float:
    """A histogram edge as written: the pass bins with float32 edges, so their shortest float32 form
    (0.01, not 0.009999999776482582); the top edge of the last bin is the maximum activation."""
    return float(str(np.float32(x)))


# --- every card of the run ------------------------------------------------------------------------------


def _pct(fraction: float | None) -> float | str:
    return "" if fraction is None else float(f"{100 * fraction:.4g}")


def summary_row(card: FeatureCard) -> list:
    """One row of feature_cards.csv (densities and firing rates in percent)."""
    top = card.examples[0] if card.examples else None
    return [
        card.feature, _pct(card.density), _pct(card.firing_rate), float(f"{card.typical_max:.4g}"),
        repr(top.tokens[top.peak]) if top else "-", repr(card.promoted[0].token), card.url or "-",
    ] + ([_pct(card.corpus.density)] if card.corpus is not None else [])


def family_summary_row(card: FamilyCard, with_corpus: bool = False) -> list:
    """A family's row of the summary table: its name, the family activation's numbers (firing = any member)."""
    top = card.examples[0] if card.examples else None
    return [card.name, "", _pct(card.firing_rate), float(f"{card.typical_max:.4g}"),
            repr(top.tokens[top.peak]) if top else "-", repr(card.promoted[0].token) if card.promoted else "-",
            "-"] + ([""] if with_corpus else [])


def shown_row(row: list) -> list:
    """A summary row as the terminal shows it: percentages with their sign, '-' for none."""
    feature, density, rate, typical, *rest = row
    out = [feature, "-" if density == "" else f"{density:.3g}%", f"{rate:.3g}%", f"{typical:.3f}", *rest]
    if len(rest) > 3:  # the corpus density
        out[-1] = "-" if rest[-1] == "" else f"{rest[-1]:.3g}%"
    return out


def summary_table(cards: Sequence[FeatureCard],
                  families: Sequence[FamilyCard] = ()) -> tuple[list[str], list[str], list[list]]:
    """The cards' summary: (CSV columns, terminal headings, CSV rows); a corpus column when they have a
    corpus. :func:`shown_row` turns a row into what the terminal shows.

    A family's row (after the features') is named ``409+501`` and gives its family activation's numbers.
    """
    with_corpus = any(card.corpus is not None for card in cards)
    return (SUMMARY_COLUMNS + (["density_corpus_percent"] if with_corpus else []),
            SUMMARY_HEADINGS + (["corpus density"] if with_corpus else []),
            [summary_row(card) for card in cards] + [family_summary_row(card, with_corpus) for card in families])


def write_index(out: OutputFolder, cards: list[FeatureCard], title: str,
                families: Sequence[FamilyCard] = ()) -> Path:
    """index.html linking every card in the folder (families' too): this run's, and earlier runs' still there."""
    entries: dict[int | str, dict] = {}
    for path in sorted(out.path.glob("feature_*.json")):  # earlier runs (this run's are not renamed in yet)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries[int(data["feature"])] = data
        except (OSError, ValueError, KeyError):
            continue  # not a card of ours
    for path in sorted(out.path.glob("family_*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries[name_of(parse_family(data["family"]))] = data
        except (OSError, ValueError, KeyError):
            continue  # not a family card of ours
    for card in cards:
        entries[card.feature] = card.to_dict() | {"title": title}
    for family in families:
        entries[family.name] = family.to_dict() | {"title": title}
    return out.write_text(constants.CARDS_INDEX_HTML, render_index([_index_row(d) for d in entries.values()], title))


INDEX_CONTEXT = 8  # tokens shown before a card's top example's peak in index.html


def _top_example(d: dict) -> str:
    """A card's top example as index.html shows it: a few tokens up to its peak token, which is bracketed
    (the peak is found by the activations stored beside the tokens)."""
    top = (d.get("top_examples") or [{}])[0]
    tokens, acts = top.get("tokens") or [], top.get("activations") or []
    if not tokens or len(acts) != len(tokens):
        return ""
    i = max(range(len(acts)), key=lambda k: acts[k])
    head = "".join(tokens[max(0, i - INDEX_CONTEXT):i])
    return ("…" if i > INDEX_CONTEXT else "") + f"{head}[{tokens[i]}]"


def _index_row(d: dict) -> dict:
    """One card's row of index.html, from its JSON (a family's is linked by its label, e.g. #409+#501)."""
    family = d.get("family")
    return ({"feature": d.get("feature", -1),
             "file": constants.FAMILY_HTML.format(family=family) if family else constants.CARD_HTML.format(
                 feature=d["feature"]),
             "origin": d.get("origin", ""), "firing_rate": d.get("firing_rate_on_prompts"),
             "typical_max": d.get("typical_max_activation"), "title": d.get("title", ""),
             "density": d.get("density_from_sparsity_file"), "top_example": _top_example(d)}
            | ({"label": label_of(parse_family(family))} if family else {})
            | ({"corpus_density": d["corpus"].get("density"), "corpus": d["corpus"].get("corpus")}
               if isinstance(d.get("corpus"), dict) else {})
            | ({"label_scores": index_text(d["label_scores"])} if d.get("label_scores") else {}))


def saved_line(out: OutputFolder, written: list[Path], record_path: Path) -> str:
    """The run's last line: how many files were saved where, and what they are."""
    pages = [p.name for p in written if p.suffix == ".html" and p.name != constants.CARDS_INDEX_HTML]
    names = {p.name for p in written}
    parts = []
    if pages:
        parts.append(f"{constants.CARDS_INDEX_HTML} (open in a browser; it links {', '.join(pages)}), MI5_<id>.png "
                     f"with the numbers behind it, card JSON, {constants.CARDS_CSV}")
    if any(n.endswith("_corpus.png") for n in names):
        parts.append("MI5_<id>_corpus.png (the corpus histogram) with MI5_<id>_corpus_hist.csv")
    if any(n.endswith("_label.png") for n in names):
        parts.append("MI5_<id>_label.png (the label's specificity plot) with MI5_<id>_label.csv")
    if constants.CORPUS_FEATURES_CSV in names:
        parts.append(f"{constants.CORPUS_FEATURES_CSV}, {constants.CORPUS_HIST_CSV}")
    parts.append(record_path.name)
    return f"Saved {len(written) + 1} files to {out.path}: " + ", ".join(parts)


# --- the mined corpus -----------------------------------------------------------------------------------


def corpus_scope(result: MiningResult, max_tokens: int | None) -> str:
    """How much of the corpus the pass covers, in words (``max_tokens``: the pass's limit, None = none)."""
    if max_tokens is not None and result.n_tokens >= max_tokens:
        return f"its first {result.n_tokens:,} tokens (--max-tokens)"
    return f"all of it, {result.n_tokens:,} tokens"


def corpus_line(mined: MiningResult, scope: str) -> str:
    """The run's sentence about the corpus: what, how much, in which windows, whether it was mined before."""
    return (f"Corpus: {mined.corpus}, {scope}, in {mined.n_windows:,} windows of {mined.window} tokens"
            + (" (already mined: read back from the saved pass)." if mined.reused else "."))


def corpus_features_table(mined: MiningResult, tokenizer: Any = None,
                          context: int = 12) -> tuple[list[str], list[list[Any]]]:
    """One row per mined feature (header, rows), for corpus_features.csv: counts, density, maximum, top peak.

    Args:
        tokenizer: with one, each row also gets its top example's peak token and the text around it
            (``context`` tokens before the peak, the peak in ``[[ ]]``, 3 tokens after).
    """
    header = ["feature", "fired_tokens", "tokens", "density", "windows_fired", "windows", "max_activation",
              "examples", "top_doc", "top_line", "top_doc_token"]
    if tokenizer is not None:
        header += ["top_token", "top_context"]
    fired, windows_fired, rows = mined.fired_counts, mined.window_hist_counts.sum(axis=1), []
    for i, f in enumerate(mined.features):
        window = mined.windows.get(int(mined.top_windows[i, 0]))
        at = int(mined.top_positions[i, 0])
        row = [
            int(f), int(fired[i]), mined.n_tokens, float(fired[i] / max(mined.n_tokens, 1)),
            int(windows_fired[i]), mined.n_windows, float(max(mined.top_values[i, 0], 0.0)),
            int((mined.top_windows[i] >= 0).sum()),
            window.doc if window else "", (window.line or "") if window else "",
            window.start + at if window else "",
        ]
        if tokenizer is not None:
            row += _peak_context(tokenizer, window.tokens.tolist(), at, context) if window else ["", ""]
        rows.append(row)
    return header, rows


def _peak_context(tokenizer: Any, ids: list[int], at: int, context: int) -> list[str]:
    """``[peak token, text around it with the peak in [[ ]]]``."""
    before = tokenizer.decode(ids[max(0, at - context) : at])
    peak = tokenizer.decode(ids[at : at + 1])
    return [peak, f"{before}[[{peak}]]{tokenizer.decode(ids[at + 1 : at + 4])}"]


def write_all_features(out: OutputFolder, mined: MiningResult, tokenizer: Any) -> list[Path]:
    """--all-features: corpus_features.csv (every feature's density and top example) and
    corpus_histograms.csv (every feature's corpus tokens per fixed activation bin)."""
    header, rows = corpus_features_table(mined, tokenizer)
    features_csv = out.write_csv(constants.CORPUS_FEATURES_CSV, header, rows)
    edges = mined.hist_edges
    bins = [f"{edge(edges[b])}-{edge(edges[b + 1])}" for b in range(len(edges) - 1)]
    hist_csv = out.write_csv(
        constants.CORPUS_HIST_CSV, ["feature", "fired_tokens", "tokens", *bins],
        [[int(f), int(c.sum()), mined.n_tokens, *c.tolist()] for f, c in zip(mined.features, mined.hist_counts)],
    )
    return [features_csv, hist_csv]


def every_feature_line(mined: MiningResult) -> str:
    """One sentence about every feature's density in the corpus (--all-features)."""
    densities = mined.densities
    fired = densities > 0
    dense = int((densities > 0.1).sum())
    median = float(np.median(densities[fired])) if fired.any() else 0.0
    return (f"Every feature over the corpus: {int(fired.sum()):,} of {len(densities):,} fire at least once "
            f"({len(densities) - int(fired.sum()):,} never do here); median density of those that fire "
            f"{100 * median:.3g}%; {dense:,} fire on more than 10% of tokens. Each feature's density and top "
            f"example: {constants.CORPUS_FEATURES_CSV}; its histogram: {constants.CORPUS_HIST_CSV}.")


def mining_record(mined: MiningResult, options: MiningOptions) -> dict:
    """The corpus pass, for the run record."""
    return {
        "corpus": mined.corpus, "tokens": mined.n_tokens, "windows": mined.n_windows,
        "documents": mined.n_documents, "window_tokens": mined.window, "bos_first": bool(mined.n_bos),
        "max_tokens": options.max_tokens, "features": "all" if options.all_features else list(options.features),
        "k": options.k, "samples": options.samples,
        "hist_edges": [float(x) for x in mined.hist_edges], "checkpoint": str(mined.checkpoint),
        "already_mined": mined.reused, "resumed_at_tokens": mined.resumed_at, "complete": mined.complete,
    } | (_rescore_record(mined) if mined.rescore is not None else {})


def _rescore_record(mined: MiningResult) -> dict:
    """A reduced-precision pass's float32 re-score, for the run record (a float32 pass has none: its record
    keeps the keys it always had)."""
    rescore = mined.rescore
    return {"dtype": rescore.dtype.removeprefix("torch."), "features_rescored": len(mined.features),
            "rescore": rescore.to_dict() | {"uncertain_features": [int(f) for f in rescore.uncertain_features]}}


def rescore_line(mined: MiningResult) -> str:
    """The run's sentence about a reduced-precision pass's float32 re-score ("" without one)."""
    rescore = mined.rescore
    if rescore is None:
        return ""
    n = len(mined.features)
    return (f"Mined in {rescore.dtype.removeprefix('torch.')}; top-k windows re-scored in float32: "
            f"{rescore.uncertain:,} of {n:,} {'feature' if n == 1 else 'features'} may still differ from float32 "
            "(flagged).")


# --- the pass's progress --------------------------------------------------------------------------------


def mining_started_line(corpus: str, options: MiningOptions, window: str) -> str:
    """The line a pass starts with: what is mined, how much, in which windows, where passes are saved."""
    what = "every feature" if options.all_features else plural(len(options.features), "feature")
    limit = f"up to {options.max_tokens:,} tokens" if options.max_tokens else "all of it"
    return f"mining {corpus} ({limit}) for {what}, in windows of {window}; saved passes: {options.checkpoint_dir}"


def mined_line(result: MiningResult, seconds: float) -> str:
    """The line a pass that encoded something ends with: how much, how fast, where it is saved, and
    how long a float32 re-score took (``seconds`` is the whole call; the speed is the pass's own)."""
    new = result.n_tokens - result.resumed_at
    spent = result.rescore.seconds if result.rescore is not None else 0.0
    took = seconds - spent
    line = (f"mined {result.n_tokens:,} tokens ({result.n_windows:,} windows, {result.n_documents:,} "
            f"documents) in {took:.1f}s, {new / max(took, 1e-9):,.0f} tokens/s; saved to {result.checkpoint}")
    return line + ("" if result.rescore is None else "\n" + rescored_line(result))


def rescored_line(result: MiningResult) -> str:
    """How much a float32 re-score encoded, and how long it took."""
    rescore = result.rescore
    return f"re-scored {rescore.windows_encoded:,} windows in float32 in {rescore.seconds:.1f}s"


class MiningProgress:
    """Progress of the pass in tokens: a tqdm bar (rate, time left) on a terminal; elsewhere (a log file,
    a pipe) one line per tenth; nothing with ``quiet``."""

    def __init__(self, quiet: bool, log: Log):
        self.log, self.quiet = log, quiet
        self.bar = progress_bar(None, "mining", quiet, unit="tok", unit_scale=True)
        self.update = progress_updater(self.bar)
        if self.bar.disable:  # not a terminal (or quiet): the lines below instead
            self.bar = None
        self.start = time.perf_counter()
        self.first: int | None = None
        self.next_tenth = 1

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.update(done, total)
            return
        if self.first is None:
            self.first, self.start = done, time.perf_counter()
        if self.quiet or not total or done < self.next_tenth * total / 10:
            return
        while self.next_tenth <= 10 and done >= self.next_tenth * total / 10:
            self.next_tenth += 1
        rate = (done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        left = f", about {duration((total - done) / rate)} left" if rate > 0 and done < total else ""
        self.log(f"mining: {done:,} of {total:,} tokens ({100 * done / total:.0f}%), {rate:,.0f} tokens/s{left}")

    def message(self, msg: str) -> None:
        """A line for a person while the pass runs: above the bar on a terminal, so that it stays whole."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    """E.g. "40 s", "3.5 min", "1.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def progress_updater(bar: Any) -> Progress:
    """A ``progress`` callback that drives a tqdm bar counted in tokens (its total follows the estimate).

    The first call puts the bar where the pass starts: tokens mined before a resume are shown as done
    but are not part of the speed and the time left.
    """
    started = False

    def update(done: int, total: int | None) -> None:
        nonlocal started
        if total is not None and total != bar.total:
            bar.total = total
        if not started:
            started = True
            bar.initial = bar.n = bar.last_print_n = done
            bar.refresh()
            return
        bar.update(done - bar.n)

    return update
