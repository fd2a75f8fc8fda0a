"""Feature cards (Chapter 3): where a feature fires, what it writes, and how often it fires.

A card answers "what is this feature, really?" from three independent angles:

* **Where it fires** - the prompts (and corpus documents) on which it reaches its highest activations,
  token by token, with the peak token marked. This is the input side: what the encoder detects.
* **What it writes** - the decoder direction pushed straight through the unembedding,
  ``W_dec[f] @ W_U`` on the model as loaded. This is the output side: which next tokens the feature's
  direction pushes up or down, ignoring the layers between the hook and the output (the "direct path";
  a first guess that Chapter 4's interventions then test).
* **How often** - the density the SAE's authors measured on its training data (when the release ships
  a sparsity file) beside the firing rate on the user's own prompts.

The BOS position(s) and padding are excluded from every statistic here (firing rates, top examples,
typical maximum activation): GPT-2's BOS residual has a huge norm and lights up the same features in
every prompt. Everything that renders a card (terminal text, HTML) escapes the tokens: prompt text
and model vocabulary are untrusted input.
"""

from __future__ import annotations

import base64
import csv
import html
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechinterp.encoding import Tokenized, iter_batches, tokenize
from mechinterp.errors import UserError
from mechinterp.loading import Loaded, neuronpedia_url

# Columns a Chapter 2 feature_stats.csv must have for --from-results (it has more; these are the ones used).
RESULTS_COLUMNS = ("group", "feature", "rank")
# Tokens shown on each side of the peak when an example is long (corpus documents can be 1024 tokens).
EXAMPLE_WINDOW = 40


# --- choosing and validating features -----------------------------------------------------------------


def validate_features(features: Sequence[int], d_sae: int) -> list[int]:
    """Check every id is a feature of this SAE; returns the ids with duplicates removed (order kept).

    Raises:
        UserError: naming the bad id and the valid range ``0..d_sae-1``.
    """
    for f in features:
        if not 0 <= int(f) < d_sae:
            raise UserError(
                f"feature {f} does not exist: this SAE has {d_sae} features, so ids run from 0 to {d_sae - 1}"
            )
    return list(dict.fromkeys(int(f) for f in features))


@dataclass
class ResultsPick:
    """One feature chosen from a Chapter 2 results table."""

    feature: int
    group: str
    rank: int


@dataclass
class FeatureChoice:
    """Which features a Chapter 3/4 run looks at, and where each came from."""

    features: list[int]
    groups: dict[int, str]  # feature -> its Chapter 2 group, or the demo concept it was planted for
    ranks: dict[int, int]  # feature -> its rank in that group (features from --from-results only)
    how: str  # one line for the output: how the features were chosen


def choose_features(
    given: Sequence[int], from_results: Path | None, top_n: int, demo: bool, d_sae: int
) -> FeatureChoice:
    """``--feature`` ids, plus the top ``top_n`` per group of a Chapter 2 CSV, else the demo's planted ones."""
    features, groups, ranks = list(given), {}, {}
    how = "given with --feature"
    if from_results is not None:
        for pick in read_results_csv(from_results, top_n):
            if pick.feature not in features:
                features.append(pick.feature)
            groups.setdefault(pick.feature, pick.group)
            ranks.setdefault(pick.feature, pick.rank)
        how = f"top {top_n} per group of {from_results}" + (" plus --feature" if given else "")
    if not features and demo:
        from mechinterp.toyworld import planted_features

        planted = planted_features().concept
        features, groups = list(planted.values()), {f: c for c, f in planted.items()}
        how = "the demo's planted concept features (no --feature given)"
    if not features:
        raise UserError("no feature given: pass --feature ID (repeatable) or --from-results feature_stats.csv")
    return FeatureChoice(validate_features(features, d_sae), groups, ranks, how)


def read_results_csv(path: Path, top_n: int) -> list[ResultsPick]:
    """The top ``top_n`` features of each group in a Chapter 2 ``feature_stats.csv``.

    ``rank`` 1 is the strongest feature within its group. A feature that tops several groups is
    listed once, under the first group in which it appears (groups in file order). Rows without a
    rank (Chapter 2's always-on features) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-results {path} does not exist; run Chapter 2 first or give --feature ID")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--from-results {path} is not a readable CSV ({err})") from None
    missing = [c for c in RESULTS_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"--from-results {path} lacks the column(s) {', '.join(missing)}; expected Chapter 2's "
            f"feature_stats.csv (columns group, feature, rank, ...)"
        )
    picks: list[ResultsPick] = []
    seen: set[int] = set()
    for line, row in enumerate(rows, start=2):
        if not (row.get("rank") or "").strip():
            continue  # not ranked (Chapter 2 leaves always-on features unranked)
        try:
            feature, rank = int(row["feature"]), int(row["rank"])
        except (TypeError, ValueError):
            raise UserError(f"{path} line {line}: feature and rank must be whole numbers") from None
        if rank <= top_n and feature not in seen:
            seen.add(feature)
            picks.append(ResultsPick(feature, row["group"], rank))
    if not picks:
        raise UserError(f"--from-results {path} has no rows with rank <= {top_n}")
    group_order = list(dict.fromkeys(r["group"] for r in rows))
    picks.sort(key=lambda p: (group_order.index(p.group), p.rank))
    return picks


# --- activations of a few features over many texts ---------------------------------------------------


@dataclass
class FeatureActivations:
    """Per-token activations of a few features over a list of texts (BOS and padding already removed)."""

    features: list[int]
    texts: list[str]
    sources: list[str]  # the group of each text, or "corpus"
    token_ids: list[list[int]]  # each text's own tokens (no BOS)
    acts: list[np.ndarray]  # per text: float32 [n_text_tokens, n_features]
    n_skip: int  # BOS positions removed from the front of every text
    truncated: list[int] = field(default_factory=list)  # texts cut to the model's context

    def column(self, feature: int) -> int:
        return self.features.index(feature)

    def prompt_max(self, feature: int) -> np.ndarray:
        """``[n_texts]`` each text's maximum activation of ``feature`` over its tokens."""
        j = self.column(feature)
        return np.array([a[:, j].max() if len(a) else 0.0 for a in self.acts], dtype=np.float32)

    def token_values(self, feature: int, source: str | None = None) -> np.ndarray:
        """All per-token activations of ``feature`` (optionally of one source), zeros included."""
        j = self.column(feature)
        parts = [a[:, j] for a, s in zip(self.acts, self.sources) if source is None or s == source]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def firing(self, feature: int, source: str | None = None) -> tuple[int, int]:
        """``(tokens where the feature fires, tokens)`` over the texts (of ``source``)."""
        values = self.token_values(feature, source)
        return int((values > 0).sum()), int(values.size)

    @property
    def source_names(self) -> list[str]:
        return list(dict.fromkeys(self.sources))


def collect_feature_activations(
    loaded: Loaded,
    texts: Sequence[str],
    sources: Sequence[str],
    features: Sequence[int],
    batch_size: int,
    tokenized: Tokenized | None = None,
) -> FeatureActivations:
    """Encode ``texts`` and keep the activations of ``features`` only, at the texts' own tokens.

    The SAE encodes every feature at once (its encoder is one matrix product, and TopK/JumpReLU SAEs
    cannot compute one feature alone), so the full ``[B, T, d_sae]`` exists for one batch at a time.
    """
    tokenized = tokenized or tokenize(loaded, texts)
    cols = torch.tensor(list(features), dtype=torch.long)
    acts: list[np.ndarray | None] = [None] * len(texts)
    for batch, batch_acts, valid in iter_batches(loaded, tokenized, batch_size):
        picked = batch_acts[..., cols.to(batch_acts.device)].float().cpu()  # [B, T, n_features]
        valid = valid.cpu()
        for row, i in enumerate(batch):
            acts[i] = picked[row][valid[row]].numpy()  # BOS and padding dropped here
    return FeatureActivations(
        features=list(features),
        texts=list(texts),
        sources=list(sources),
        token_ids=[ids[tokenized.n_skip :] for ids in tokenized.ids],
        acts=[a if a is not None else np.zeros((0, len(features)), np.float32) for a in acts],
        n_skip=tokenized.n_skip,
        truncated=list(tokenized.truncated),
    )


def typical_max_activation(fa: FeatureActivations, feature: int) -> tuple[float, int]:
    """The feature's typical maximum activation: the median, over texts where it fires, of each text's max.

    A median of per-text maxima is robust to one outlier text and does not depend on how many texts
    the feature ignores, so "2x the typical max" means the same for a rare and a common feature.

    Returns:
        ``(value, number of texts where it fires)``; ``(0.0, 0)`` when it never fires.
    """
    maxes = fa.prompt_max(feature)
    fired = maxes[maxes > 0]
    return (float(np.median(fired)), int(fired.size)) if fired.size else (0.0, 0)


# --- what a feature writes ----------------------------------------------------------------------------


@dataclass
class LogitEffect:
    token_id: int
    token: str
    value: float


def logit_effects(loaded: Loaded, feature: int, k: int = 15) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """The ``k`` most promoted and ``k`` most suppressed tokens of ``W_dec[feature] @ W_U``.

    Uses the model's ``W_U`` as loaded (TransformerLens has folded the final LayerNorm's weights into
    it and centred it), so the values are the direct logit contribution of one unit of the feature.

    Returns:
        ``(promoted, suppressed)``, each strongest first.
    """
    with torch.inference_mode():
        direction = loaded.sae.sae.W_dec[feature].to(loaded.model.W_U.dtype)  # [d_model]
        effect = (direction @ loaded.model.W_U).float().cpu()  # [d_vocab]
    k = min(k, effect.numel())
    top = torch.topk(effect, k)
    bottom = torch.topk(-effect, k)
    tok = loaded.model.tokenizer

    def rows(values: torch.Tensor, ids: torch.Tensor, sign: float) -> list[LogitEffect]:
        return [LogitEffect(int(i), tok.decode([int(i)]), sign * float(v)) for v, i in zip(values, ids)]

    return rows(top.values, top.indices, 1.0), rows(bottom.values, bottom.indices, -1.0)


def density_from_sparsity(loaded: Loaded, feature: int) -> float | None:
    """Fraction of training tokens the feature fires on, from the release's sparsity file (log10)."""
    log_sparsity = loaded.sae.log_sparsity
    if log_sparsity is None:
        return None
    return float(10 ** float(log_sparsity[feature]))


# --- the card -----------------------------------------------------------------------------------------


@dataclass
class Example:
    """One top-activating text, with its tokens and their activations of the card's feature."""

    rank: int
    text_index: int
    source: str
    tokens: list[str]
    acts: np.ndarray  # float32 [n_tokens]
    peak: int  # index into tokens (BOS already removed)

    @property
    def max_act(self) -> float:
        return float(self.acts[self.peak])


@dataclass
class FeatureCard:
    feature: int
    url: str
    density: float | None  # from the SAE's sparsity file, or None
    fired_by_source: dict[str, tuple[int, int]]  # source -> (tokens fired, tokens)
    typical_max: float
    n_texts_fired: int
    n_texts: int
    examples: list[Example]
    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    filtered: str

    @property
    def fired_total(self) -> tuple[int, int]:
        fired = sum(v[0] for v in self.fired_by_source.values())
        total = sum(v[1] for v in self.fired_by_source.values())
        return fired, total

    @property
    def firing_rate(self) -> float:
        fired, total = self.fired_total
        return fired / total if total else 0.0

    def to_dict(self) -> dict:
        """Everything on the card, as plain JSON-able numbers."""
        return {
            "feature": self.feature,
            "neuronpedia_url": self.url,
            "density_from_sparsity_file": self.density,
            "firing_rate_on_prompts": self.firing_rate,
            "fired_tokens_by_source": {s: {"fired": a, "tokens": b} for s, (a, b) in self.fired_by_source.items()},
            "typical_max_activation": self.typical_max,
            "texts_where_it_fires": self.n_texts_fired,
            "texts": self.n_texts,
            "filtered": self.filtered,
            "top_examples": [
                {
                    "rank": e.rank,
                    "text_index": e.text_index,
                    "source": e.source,
                    "max_activation": e.max_act,
                    "peak_token": e.tokens[e.peak],
                    "peak_index": e.peak,
                    "tokens": e.tokens,
                    "activations": [round(float(a), 5) for a in e.acts],
                }
                for e in self.examples
            ],
            "promoted": [vars(x) for x in self.promoted],
            "suppressed": [vars(x) for x in self.suppressed],
        }


def filter_note(fa: FeatureActivations) -> str:
    """What was left out of every statistic, in words for the outputs."""
    note = (
        f"the first {fa.n_skip} position(s) of each text (BOS) and all padding are excluded from every number"
        if fa.n_skip
        else "padding is excluded from every number (this SAE uses no BOS)"
    )
    if fa.truncated:
        note += f"; {len(fa.truncated)} text(s) were cut to the model's context length"
    return note


def build_card(loaded: Loaded, fa: FeatureActivations, feature: int, n_examples: int = 10, n_logits: int = 15) -> FeatureCard:
    """Assemble the card of ``feature`` from activations already collected over the texts."""
    j = fa.column(feature)
    maxes = fa.prompt_max(feature)
    # Stable sort on -max: ties keep input order, so the card is deterministic.
    order = [int(i) for i in np.argsort(-maxes, kind="stable") if maxes[i] > 0][:n_examples]
    tok = loaded.model.tokenizer
    examples = []
    for rank, i in enumerate(order, start=1):
        acts = fa.acts[i][:, j]
        examples.append(
            Example(
                rank=rank,
                text_index=i,
                source=fa.sources[i],
                tokens=[tok.decode([t]) for t in fa.token_ids[i]],
                acts=acts,
                peak=int(acts.argmax()),
            )
        )
    promoted, suppressed = logit_effects(loaded, feature, n_logits)
    typical, n_fired = typical_max_activation(fa, feature)
    return FeatureCard(
        feature=feature,
        url=neuronpedia_url(loaded.sae.neuronpedia_id, feature),
        density=density_from_sparsity(loaded, feature),
        fired_by_source={s: fa.firing(feature, s) for s in fa.source_names},
        typical_max=typical,
        n_texts_fired=n_fired,
        n_texts=len(fa.texts),
        examples=examples,
        promoted=promoted,
        suppressed=suppressed,
        filtered=filter_note(fa),
    )


# --- rendering: terminal -----------------------------------------------------------------------------

# Background colours (ANSI 256-colour palette) from faint to strong, for activation / max activation.
ANSI_LEVELS = (230, 223, 216, 209, 202)
ANSI_RESET = "\x1b[0m"


def safe_text(text: str) -> str:
    """Text safe to print to a terminal: newlines and tabs made visible, control characters escaped.

    Model vocabularies and user prompts can contain ESC and other control characters; printed raw,
    they would be interpreted by the terminal.
    """
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("→")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _window(ex: Example, window: int) -> tuple[int, int]:
    start = max(0, ex.peak - window)
    return start, min(len(ex.tokens), ex.peak + window + 1)


def highlight_terminal(ex: Example, scale: float, color: bool, window: int = EXAMPLE_WINDOW) -> str:
    """One example's tokens with their activations made visible.

    With ``color``, firing tokens get a background from faint to strong and the peak is bold and
    underlined; without, firing tokens are written ``[token:act]`` and the peak ``[[token:act]]``.
    """
    start, stop = _window(ex, window)
    parts = ["…" if start > 0 else ""]
    for i in range(start, stop):
        token, act = safe_text(ex.tokens[i]), float(ex.acts[i])
        if act <= 0:
            parts.append(token)
            continue
        # Keep a token's leading space outside the mark, so words stay readable.
        lead = token[: len(token) - len(token.lstrip(" "))]
        body = token[len(lead) :] or token
        if color:
            level = ANSI_LEVELS[min(len(ANSI_LEVELS) - 1, int(len(ANSI_LEVELS) * act / (scale or 1.0)))]
            style = f"\x1b[30;48;5;{level}" + (";1;4m" if i == ex.peak else "m")
            parts.append(f"{lead}{style}{body}{ANSI_RESET}")
        else:
            mark = f"{body}:{act:.2f}"
            parts.append(f"{lead}[[{mark}]]" if i == ex.peak else f"{lead}[{mark}]")
    parts.append("…" if stop < len(ex.tokens) else "")
    return "".join(parts)


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def format_card_text(card: FeatureCard, title: str, color: bool) -> str:
    """The card as terminal text (ANSI colour only when ``color``)."""
    lines = [f"=== Feature #{card.feature} · {title}"]
    lines.append(f"Neuronpedia: {card.url or '(this SAE is not on Neuronpedia)'}")
    density = (
        f"{_pct(card.density)} of training tokens (SAE sparsity file)" if card.density is not None
        else "no sparsity file shipped with this SAE"
    )
    fired, total = card.fired_total
    lines.append(f"Density: {density}")
    lines.append(f"Firing rate on your texts: {_pct(card.firing_rate)} ({fired} of {total} tokens)")
    per_source = ", ".join(f"{s} {_pct(a / b if b else 0)}" for s, (a, b) in card.fired_by_source.items())
    lines.append(f"  by source: {per_source}")
    lines.append(
        f"Typical max activation: {card.typical_max:.3f} (median of each text's max over the "
        f"{card.n_texts_fired} of {card.n_texts} texts where it fires)"
    )
    lines.append(f"Filtered: {card.filtered}")
    # Prose lines fit 100 columns (continuations indented); the highlighted examples are left whole.
    lines = [textwrap.fill(line, 100, subsequent_indent="    ", break_on_hyphens=False) for line in lines]
    lines.append("")
    if card.examples:
        key = "colour = activation, bold underlined = peak" if color else "[token:activation], [[peak]]"
        lines.append(f"Top {len(card.examples)} activating texts ({key}):")
        scale = card.examples[0].max_act
        for ex in card.examples:
            lines.append(
                f"  {ex.rank:>2}. [{ex.source}] max {ex.max_act:.3f} at {safe_text(repr(ex.tokens[ex.peak]))}"
            )
            lines.append(f"      {highlight_terminal(ex, scale, color)}")
    else:
        lines.append("It does not fire on any of your texts (BOS excluded): no examples to show.")
    lines.append("")
    lines.append(f"What it writes (W_dec[{card.feature}] @ W_U, direct logit effect per unit of activation):")
    width = max(len(safe_text(repr(x.token))) for x in card.promoted + card.suppressed)
    lines.append(f"  {'promoted':<{width + 9}}   suppressed")
    for up, down in zip(card.promoted, card.suppressed):
        left = f"{safe_text(repr(up.token)):<{width}} {up.value:+8.3f}"
        lines.append(f"  {left}   {safe_text(repr(down.token)):<{width}} {down.value:+8.3f}")
    return "\n".join(lines)


# --- rendering: HTML ------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1100px; color: #1d1d1f; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.sub { color: #555; font-size: .9rem; }
.demo { background: #fff3cd; border: 1px solid #e0c36c; padding: .3rem .6rem; border-radius: 4px; display: inline-block; }
table.stats td { padding: .15rem .9rem .15rem 0; vertical-align: top; }
table.stats td:first-child { color: #555; white-space: nowrap; }
.ex { margin: .45rem 0 .8rem 0; }
.exhead { font-size: .85rem; color: #555; }
.src { background: #eef; border-radius: 3px; padding: 0 .3rem; }
.toks { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92rem; white-space: pre-wrap;
        word-break: break-word; background: #fafafa; border: 1px solid #eee; padding: .4rem .5rem; border-radius: 4px; }
.t { border-radius: 2px; }
.peak { outline: 2px solid #b00020; outline-offset: 0; font-weight: 600; }
.legend span { display: inline-block; padding: 0 .4rem; margin-right: .2rem; font-family: ui-monospace, monospace; }
.cols { display: flex; gap: 2rem; flex-wrap: wrap; }
.cols > div { flex: 1; min-width: 300px; }
table.logits { border-collapse: collapse; width: 100%; font-size: .9rem; }
table.logits td { padding: .1rem .4rem; }
table.logits td.tok { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre; }
table.logits td.val { text-align: right; font-variant-numeric: tabular-nums; width: 5rem; }
.bar { height: .8rem; border-radius: 2px; }
.up { background: #2e7d32; } .down { background: #c62828; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _token_html(token: str) -> str:
    # Escape first (the text is untrusted), then make newlines visible but keep them as line breaks.
    return html.escape(token).replace("\n", "↵\n").replace("\t", "→")


def _bg(act: float, scale: float) -> str:
    alpha = 0.0 if act <= 0 else 0.15 + 0.85 * min(1.0, act / (scale or 1.0))
    return f"background: rgba(255, 120, 0, {alpha:.2f});" if alpha else ""


def example_html(ex: Example, scale: float, window: int = 60) -> str:
    start, stop = _window(ex, window)
    spans = ["…" if start > 0 else ""]
    for i in range(start, stop):
        act = float(ex.acts[i])
        cls = "t peak" if i == ex.peak else "t"
        tip = html.escape(f"{ex.tokens[i]!r}: {act:.3f}", quote=True)
        spans.append(f'<span class="{cls}" style="{_bg(act, scale)}" title="{tip}">{_token_html(ex.tokens[i])}</span>')
    spans.append("…" if stop < len(ex.tokens) else "")
    head = (
        f'<div class="exhead">#{ex.rank} · <span class="src">{html.escape(ex.source)}</span> · '
        f"text {ex.text_index + 1} · max {ex.max_act:.3f} at <b>{html.escape(repr(ex.tokens[ex.peak]))}</b></div>"
    )
    return f'<div class="ex">{head}<div class="toks">{"".join(spans)}</div></div>'


def _logit_table(rows: list[LogitEffect], css: str, scale: float) -> str:
    # One scale for both columns, so a bar's length compares across promoted and suppressed.
    scale = scale or 1.0
    sign = 1.0 if css == "up" else -1.0  # a bar only for the direction the column is about
    body = "".join(
        f'<tr><td class="tok">{html.escape(repr(r.token))}</td><td class="val">{r.value:+.3f}</td>'
        f'<td style="width:45%"><div class="bar {css}" style="width:{100 * max(0.0, sign * r.value) / scale:.0f}%">'
        "</div></td></tr>"
        for r in rows
    )
    return f'<table class="logits">{body}</table>'


def render_html(card: FeatureCard, title: str, is_demo: bool, figure_png: bytes | None = None) -> str:
    """A self-contained HTML page for the card: inline CSS, the figure inlined as a data URI, no scripts."""
    esc = html.escape
    fired, total = card.fired_total
    density = (
        f"{_pct(card.density)} of training tokens (from the SAE's sparsity file)"
        if card.density is not None else "not available (this SAE ships no sparsity file)"
    )
    link = (
        f'<a href="{esc(card.url, quote=True)}">{esc(card.url)}</a>' if card.url else "not on Neuronpedia"
    )
    per_source = "<br>".join(
        f'<span class="src">{esc(s)}</span> {_pct(a / b if b else 0)} ({a} of {b} tokens)'
        for s, (a, b) in card.fired_by_source.items()
    )
    stats = [
        ("Neuronpedia", link),
        ("Density", esc(density)),
        ("Firing rate on your texts", f"{_pct(card.firing_rate)} ({fired} of {total} tokens)"),
        ("By source", per_source),
        (
            "Typical max activation",
            f"{card.typical_max:.3f} (median of each text's max over the {card.n_texts_fired} of "
            f"{card.n_texts} texts where it fires)",
        ),
        ("Filtered", esc(card.filtered)),
    ]
    stats_html = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in stats)
    if card.examples:
        scale = card.examples[0].max_act
        legend = "".join(
            f'<span style="{_bg(scale * q, scale)}">{q * scale:.2f}</span>' for q in (0.1, 0.25, 0.5, 0.75, 1.0)
        )
        examples = (
            f'<p class="sub legend">Colour = activation of feature #{card.feature} on each token '
            f"(hover for the value): {legend} · the peak token is outlined.</p>"
            + "".join(example_html(ex, scale) for ex in card.examples)
        )
    else:
        examples = "<p>It does not fire on any of your texts (BOS excluded).</p>"
    figure = ""
    if figure_png:
        data = base64.b64encode(figure_png).decode("ascii")
        figure = f'<h2>Activations and logit effects</h2><img alt="feature {card.feature} figure" src="data:image/png;base64,{data}">'
    scale = max((abs(r.value) for r in card.promoted + card.suppressed), default=1.0)
    demo = '<p class="demo">Synthetic demo: a toy model with planted features, not GPT-2.</p>' if is_demo else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Feature #{card.feature}</title>
<style>{_CSS}</style></head>
<body>
<h1>Feature #{card.feature}</h1>
<div class="sub">{esc(title)}</div>
{demo}
<h2>How often it fires</h2>
<table class="stats">{stats_html}</table>
<h2>Where it fires: top {len(card.examples)} activating texts</h2>
{examples}
<h2>What it writes: W_dec[{card.feature}] @ W_U</h2>
<p class="sub">The decoder direction pushed straight through the unembedding: how much one unit of this feature
raises (left) or lowers (right) each next-token logit, ignoring the layers after the hook.</p>
<div class="cols"><div><b>Most promoted</b>{_logit_table(card.promoted, "up", scale)}</div>
<div><b>Most suppressed</b>{_logit_table(card.suppressed, "down", scale)}</div></div>
{figure}
</body></html>
"""


def histogram_counts(fa: FeatureActivations, feature: int, bins: int = 30) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Histogram of the feature's non-zero per-token activations, one count array per source.

    Returns:
        ``(edges [bins + 1], {source: counts [bins]})``.
    """
    nonzero = {s: v[v > 0] for s in fa.source_names for v in [fa.token_values(feature, s)]}
    values = np.concatenate(list(nonzero.values())) if nonzero else np.zeros(0)
    top = float(values.max()) if values.size else 1.0
    edges = np.linspace(0.0, top * 1.0001 if top > 0 else 1.0, bins + 1)
    return edges, {s: np.histogram(v, bins=edges)[0] for s, v in nonzero.items()}


def ansi_allowed(stream, mode: str) -> bool:
    """Colour only on a terminal (mode "auto"), unless forced; NO_COLOR (no-color.org) turns auto off."""
    import os

    if mode == "always":
        return True
    if mode == "never":
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")
