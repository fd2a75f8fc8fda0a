"""Rendering a feature card: coloured terminal text, and a self-contained HTML page (with an index page
linking every card of a folder); a feature family's card likewise. The card's figures are drawn in
:mod:`mechinterp.cards.figures`.

Everything that renders a card escapes the tokens: prompt text, corpus text and model vocabulary are
untrusted input.
"""

from __future__ import annotations

import base64
import html
import itertools
import textwrap
from collections.abc import Callable, Sequence

from mechinterp.cards.card import BaselineComparison, CorpusEvidence, Example, FeatureCard
from mechinterp.cards.family import SCALE_NOTE, FamilyCard
from mechinterp.core.features import EXAMPLE_WINDOW
from mechinterp.core.logits import LogitEffect
from mechinterp.core.tables import format_table, safe_text

# --- rendering: terminal -----------------------------------------------------------------------------
# Background colours (ANSI 256-colour palette) from faint to strong, for activation / max activation.
ANSI_LEVELS = (230, 223, 216, 209, 202)
ANSI_RESET = "\x1b[0m"


def _window(ex: Example, window: int) -> tuple[int, int]:
    start = max(0, ex.peak - window)
    return start, min(len(ex.tokens), ex.peak + window + 1)


def format_corpus_text(c: CorpusEvidence, color: bool) -> list[str]:
    """The corpus part of a card, as terminal lines."""
    scope = f", {c.scope}" if c.scope else ""
    lines = [textwrap.fill(
        f"In the corpus ({c.corpus}{scope}; windows of {c.window} tokens): fires on {_corpus_density(c)}; "
        f"max {c.max_activation:.3f}, typical max ~{c.typical_max:.3g} (median of the per-window maxima where it "
        "fires)", 100, subsequent_indent="    ", break_on_hyphens=False)]
    if c.rescored_from is not None:
        lines.append(textwrap.fill(rescore_note(c), 100, subsequent_indent="    ", break_on_hyphens=False))
    if not c.examples:
        lines.append("It never fires in the corpus (BOS excluded): no corpus examples.")
        return lines
    key = "colour = activation, bold underlined = peak" if color else "[token:activation], [[peak]]"
    lines.append(f"Top {len(c.examples)} corpus windows ({key}):")
    scale = c.examples[0].max_act
    lines += _example_lines(c.examples, scale, color, lambda ex: f"{_rank(ex)} [{ex.where}]")
    if c.level_examples:
        lines.append("Lower activation levels (windows drawn at random where it fires, nearest to each level):")
        lines += _example_lines(c.level_examples, scale, color, lambda ex: f"{_rank(ex)} [{ex.where}] {ex.label}:")
    return lines


def rescore_note(c: CorpusEvidence) -> str:
    """What a float32 re-score of a reduced-precision pass means for this card's corpus windows."""
    if c.uncertain:
        return (f"Note: its top corpus windows may differ from a float32 pass's. The pass ran in {c.rescored_from}, "
                f"which rounds near-equal peaks into ties; its candidate windows were re-scored in float32, but a "
                "window it ranked below them could still belong here (flagged by the re-score; a larger "
                "--candidates-factor, or --dtype float32, would tell).")
    return (f"Mined in {c.rescored_from}; the top windows were re-scored in float32, so they and their "
            f"activations are float32's; the density, histogram and levels are the {c.rescored_from} pass's.")


def _example_lines(examples: Sequence[Example], scale: float, color: bool, head: Callable[[Example], str]) -> list[str]:
    """Two terminal lines per example: ``head``, its peak, then its highlighted tokens."""
    lines = []
    for ex in examples:
        lines.append(f"  {head(ex)} max {ex.max_act:.3f} at {safe_text(repr(ex.tokens[ex.peak]))}")
        lines.append(f"      {highlight_terminal(ex, scale, color)}")
    return lines


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


def _rank(ex: Example) -> str:
    """``" 3."`` for a ranked example; a dot for one drawn at random (its rank is not known)."""
    return f"{ex.rank:>2}." if ex.rank > 0 else " ·"


def _corpus_density(c: CorpusEvidence) -> str:
    return (f"{_pct(c.density)} of {c.n_tokens:,} corpus tokens ({c.fired:,} tokens; in {c.windows_fired:,} of "
            f"{c.n_windows:,} windows)")


def baseline_text(c: BaselineComparison) -> str:
    """E.g. "fires on 7.33% of 'happy' tokens (its busiest group) vs 0% of 'baseline' tokens (0 of 612):
    never in the baseline"."""
    base = f"{_pct(c.rate)} of {c.baseline!r} tokens ({c.fired} of {c.tokens})"
    if c.group is None:
        return f"fires on {base}; there is no other group to compare with"
    if c.fired:
        verdict = f"{c.group_rate / c.rate:.3g} times the baseline's rate"
    else:
        verdict = "never in the baseline" if c.group_fired else "in neither"
    return f"fires on {_pct(c.group_rate)} of {c.group!r} tokens (its busiest group) vs {base}: {verdict}"


def format_card_text(card: FeatureCard, title: str, color: bool) -> str:
    """The card as terminal text (ANSI colour only when ``color``)."""
    lines = [f"=== Feature #{card.feature} · {title}"]
    if card.origin:
        lines.append(f"From: {card.origin}")
    lines.append(f"Neuronpedia: {card.url or '(this SAE is not on Neuronpedia)'}")
    density = (
        f"{_pct(card.density)} of training tokens (SAE sparsity file)" if card.density is not None
        else "no sparsity file shipped with this SAE"
    )
    fired, total = card.fired_total
    lines.append(f"Density: {density}")
    if card.corpus is not None:
        lines.append(f"Density in the corpus: {_corpus_density(card.corpus)}")
    lines.append(f"Firing rate on your texts: {_pct(card.firing_rate)} ({fired} of {total} tokens)")
    per_source = ", ".join(f"{s} {_pct(a / b if b else 0)}" for s, (a, b) in card.fired_by_source.items())
    lines.append(f"  by source: {per_source}")
    comparison = card.against_baseline()
    if comparison is not None:
        lines.append(f"  against the baseline: {baseline_text(comparison)}")
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
        lines += _example_lines(card.examples, scale, color, lambda ex: f"{ex.rank:>2}. [{ex.source}]")
        if card.more_examples:
            lines.append("Beyond the top texts (lower activation levels, and other groups where it fires):")
            lines += _example_lines(card.more_examples, scale, color,
                                    lambda ex: f"{ex.rank:>2}. [{ex.source}] {ex.label}:")
    elif card.n_texts:
        lines.append("It does not fire on any of your texts (BOS excluded): no examples to show.")
    else:
        lines.append("No prompts were searched.")
    if card.corpus is not None:
        lines += ["", *format_corpus_text(card.corpus, color)]
    lines.append("")
    lines.append(f"What it writes (W_dec[{card.feature}] @ W_U, direct logit effect per unit of activation):")
    lines += _logit_columns(card.promoted, card.suppressed)
    return "\n".join(lines)


BRIEF_EXAMPLES = 3  # top texts (and corpus windows) per card in the terminal summary
BRIEF_LOGITS = 3  # promoted and suppressed tokens per card in the terminal summary


def brief_card_text(card: FeatureCard, color: bool) -> str:
    """The card in about a dozen lines: where it fires, its top texts, what it writes (the rest is in the
    full report and the HTML card)."""
    fired, total = card.fired_total
    density = f"Density {_pct(card.density)} of training tokens; " if card.density is not None else ""
    lines = [f"=== Feature #{card.feature}" + (f" ({card.origin})" if card.origin else ""),
             f"{density}fires on {_pct(card.firing_rate)} of your text tokens ({fired} of {total}; "
             f"{_busiest(card.fired_by_source)}); typical max {card.typical_max:.3f}"]
    comparison = card.against_baseline()
    if comparison is not None:
        lines.append(f"Against the baseline: {baseline_text(comparison)}")
    if card.corpus is not None:
        lines.append(f"In the corpus: fires on {_corpus_density(card.corpus)}")
    lines = [textwrap.fill(line, 100, subsequent_indent="    ", break_on_hyphens=False) for line in lines]
    if card.examples:
        scale = card.examples[0].max_act
        lines.append(f"Top {min(BRIEF_EXAMPLES, len(card.examples))} of your texts:")
        lines += _example_lines(card.examples[:BRIEF_EXAMPLES], scale, color, lambda ex: f"{ex.rank:>2}. [{ex.source}]")
    if card.corpus is not None and card.corpus.examples:
        c = card.corpus
        if c.uncertain:  # the summary keeps the warning, not the full note
            lines.append(textwrap.fill(f"Note: its top corpus windows may differ from a float32 pass's (mined in "
                                       f"{c.rescored_from}; see the full report)", 100, subsequent_indent="    "))
        lines.append(f"Top {min(BRIEF_EXAMPLES, len(c.examples))} corpus windows:")
        lines += _example_lines(c.examples[:BRIEF_EXAMPLES], c.examples[0].max_act, color,
                                lambda ex: f"{_rank(ex)} [{ex.where}]")
    lines.append(_brief_logits(f"W_dec[{card.feature}] @ W_U", card.promoted, card.suppressed))
    return "\n".join(lines)


def _busiest(fired_by_source: dict[str, tuple[int, int]], shown: int = 3) -> str:
    """The sources where it fires most, e.g. "happy 25.2%, 0% elsewhere"."""
    rates = sorted(((s, a / b if b else 0.0) for s, (a, b) in fired_by_source.items()), key=lambda sr: -sr[1])
    firing = [(s, r) for s, r in rates if r > 0]
    text = ", ".join(f"{s} {_pct(r)}" for s, r in firing[:shown])
    rest = len(rates) - min(len(firing), shown)
    if not rest:
        return text
    return (text + ", " if text else "") + ("0% elsewhere" if len(firing) <= shown else f"{rest} more sources")


NOTHING_WRITTEN = 1e-4  # direct logit effects all below this: the direction writes nothing on the vocabulary


def _brief_logits(what: str, promoted: list[LogitEffect], suppressed: list[LogitEffect]) -> str:
    """What the decoder direction writes, promoted and suppressed, in one wrapped line (or that it writes
    nothing: effects of 1e-7 are round-off, and listing them would report nothing as something)."""
    def shown(effects: list[LogitEffect]) -> str:
        return ", ".join(f"{safe_text(repr(e.token))} {e.value:+.3g}" for e in effects[:BRIEF_LOGITS]) or "-"
    largest = max((abs(e.value) for e in promoted + suppressed), default=0.0)
    text = (f"Writes ({what}): promotes {shown(promoted)}; suppresses {shown(suppressed)}" if largest >= NOTHING_WRITTEN
            else f"Writes ({what}): nothing on the vocabulary (largest |effect| {largest:.2g})")
    return textwrap.fill(text, 100, subsequent_indent="    ", break_on_hyphens=False)


def brief_family_text(card: FamilyCard, color: bool) -> str:
    """A family's card in a few lines: where it fires, which member carries it, its top texts."""
    fired, total = card.fired_total
    lines = [f"=== Family {card.label}" + (f" ({card.origin})" if card.origin else ""),
             textwrap.fill(f"Fires on {_pct(card.firing_rate)} of your text tokens ({fired} of {total}, where any "
                           f"member fires; {_busiest(card.fired_by_source)}); typical max family activation {card.typical_max:.3f}", 100,
                           subsequent_indent="    ", break_on_hyphens=False),
             *("  " + line for line in format_table(*member_table(card)).split("\n"))]
    if card.examples:
        lines.append(f"Top {min(BRIEF_EXAMPLES, len(card.examples))} of your texts by family activation:")
        lines += _example_lines(card.examples[:BRIEF_EXAMPLES], card.examples[0].max_act, color,
                                lambda ex: f"{ex.rank:>2}. [{ex.source}] {_member_head(card, ex)}")
    lines.append(_brief_logits("Σ typical max × W_dec[m] @ W_U", card.promoted, card.suppressed))
    return "\n".join(lines)


def _logit_columns(promoted: list[LogitEffect], suppressed: list[LogitEffect]) -> list[str]:
    """The promoted and suppressed tokens side by side, with their logit effects (or one line saying that
    the direction writes nothing, when every effect is round-off)."""
    largest = max((abs(e.value) for e in promoted + suppressed), default=0.0)
    if largest < NOTHING_WRITTEN:
        return [f"  nothing on the vocabulary: the largest |effect| is {largest:.2g}, below {NOTHING_WRITTEN:g}"]
    width = max((len(safe_text(repr(x.token))) for x in promoted + suppressed), default=1)
    lines = [f"  {'promoted':<{width + 9}}   suppressed"]
    # Either column can be shorter: only tokens pushed in the column's direction are listed.
    for up, down in itertools.zip_longest(promoted, suppressed):
        left = f"{safe_text(repr(up.token)):<{width}} {up.value:+8.3f}" if up else " " * (width + 9)
        right = f"{safe_text(repr(down.token)):<{width}} {down.value:+8.3f}" if down else ""
        lines.append(f"  {left}   {right}".rstrip())
    return lines


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


def example_html(ex: Example, scale: float, window: int = 60, why: str = "") -> str:
    start, stop = _window(ex, window)
    spans = ["…" if start > 0 else ""]
    for i in range(start, stop):
        act = float(ex.acts[i])
        cls = "t peak" if i == ex.peak else "t"
        tip = html.escape(f"{ex.tokens[i]!r}: {act:.3f}", quote=True)
        # A word token's leading space goes outside its box: an outlined ' glad' would swallow the space and
        # read "wasglad".
        token = ex.tokens[i]
        body = token.lstrip(" ") or token
        lead = token[: len(token) - len(body)]
        spans.append(f'{lead}<span class="{cls}" style="{_bg(act, scale)}" title="{tip}">{_token_html(body)}</span>')
    spans.append("…" if stop < len(ex.tokens) else "")
    rank = f"#{ex.rank} · " if ex.rank > 0 else ""
    where = html.escape(ex.where) if ex.where else f"text {ex.text_index + 1}"
    head = (
        f'<div class="exhead">{rank}<span class="src">{html.escape(ex.source)}</span> · '
        f"{where} · max {ex.max_act:.3f} at <b>{html.escape(repr(ex.tokens[ex.peak]))}</b>"
        + (f" · {html.escape(why)}" if why else "") + "</div>"
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


def _corpus_html(c: CorpusEvidence, feature: int, figure_png: bytes | None) -> str:
    esc = html.escape
    parts = [
        f"<h2>In the corpus: {esc(c.corpus)}</h2>",
        (f'<p class="sub">{esc((c.scope or f"{c.n_tokens:,} tokens").capitalize())}, in {c.n_windows:,} windows '
         f"of {c.window} tokens from {c.n_documents:,} documents, read in one streaming pass; BOS and padding "
         "excluded.</p>"),
        '<table class="stats">',
        f"<tr><td>Density in the corpus</td><td>{esc(_corpus_density(c))}</td></tr>",
        f"<tr><td>Max activation</td><td>{c.max_activation:.3f}</td></tr>",
        f"<tr><td>Typical max</td><td>~{c.typical_max:.3g} (median of the per-window maxima where it fires)</td></tr>",
        "</table>",
    ]
    if c.rescored_from is not None:  # the flagged note in the demo's yellow box: it qualifies what follows
        parts.append(f'<p class="{"demo" if c.uncertain else "sub"}">{esc(rescore_note(c))}</p>')
    if c.examples:
        scale = c.examples[0].max_act
        parts.append(f"<h3>Top {len(c.examples)} corpus windows</h3>")
        parts += [example_html(ex, scale) for ex in c.examples]
        if c.level_examples:
            parts.append('<h3>Lower activation levels</h3><p class="sub">Windows drawn at random among those where '
                         "it fires, each the nearest to a quartile or the median of the per-window maxima.</p>")
            parts += [example_html(ex, scale, why=ex.label) for ex in c.level_examples]
    else:
        parts.append("<p>It never fires in the corpus (BOS excluded).</p>")
    if figure_png:
        data = base64.b64encode(figure_png).decode("ascii")
        parts.append(f'<img alt="feature {feature} corpus histogram" src="data:image/png;base64,{data}">')
    return "\n".join(parts)


DEMO_NOTE = '<p class="demo">Synthetic demo: a toy model with planted features, not GPT-2.</p>'


def _figure_html(figure_png: bytes | None, alt: str) -> str:
    """The card's figure, inlined as PNG data so the page is one self-contained file."""
    if not figure_png:
        return ""
    data = base64.b64encode(figure_png).decode("ascii")
    return f'<h2>Activations and logit effects</h2><img alt="{alt}" src="data:image/png;base64,{data}">'


def render_html(card: FeatureCard, title: str, is_demo: bool, figure_png: bytes | None = None,
                corpus_png: bytes | None = None, extra_html: str = "") -> str:
    """A self-contained HTML page for the card: inline CSS, the figures inlined as data URIs, no scripts.

    ``corpus_png``: the corpus histogram (``mechinterp.cards.figures.corpus_figure``), shown in the corpus section.
    ``extra_html``: a section placed after the examples (e.g. the label scores, ``mechinterp.cards.label_report``).
    """
    esc = html.escape
    stats_html = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in _stats_rows(card))
    examples = _examples_html(card)
    corpus = "\n" + _corpus_html(card.corpus, card.feature, corpus_png) if card.corpus is not None else ""
    figure = _figure_html(figure_png, f"feature {card.feature} figure")
    scale = max((abs(r.value) for r in card.promoted + card.suppressed), default=1.0)
    demo = DEMO_NOTE if is_demo else ""
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
{examples}{corpus}
{extra_html}
<h2>What it writes: W_dec[{card.feature}] @ W_U</h2>
<p class="sub">The decoder direction pushed straight through the unembedding: how much one unit of this feature
raises (left) or lowers (right) each next-token logit, ignoring the layers after the hook.</p>
<div class="cols"><div><b>Most promoted</b>{_logit_table(card.promoted, "up", scale)}</div>
<div><b>Most suppressed</b>{_logit_table(card.suppressed, "down", scale)}</div></div>
{figure}
</body></html>
"""


def _stats_rows(card: FeatureCard) -> list[tuple[str, str]]:
    """The card's "How often it fires" table: (label, HTML) rows, text escaped."""
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
    comparison = card.against_baseline()
    return [
        *([("From", esc(card.origin))] if card.origin else []),
        ("Neuronpedia", link),
        ("Density", esc(density)),
        *([("Density in the corpus", esc(_corpus_density(card.corpus)))] if card.corpus is not None else []),
        ("Firing rate on your texts", f"{_pct(card.firing_rate)} ({fired} of {total} tokens)"),
        ("By source", per_source),
        *([("Against the baseline", esc(baseline_text(comparison)))] if comparison is not None else []),
        (
            "Typical max activation",
            (f"{card.typical_max:.3f} (median of each text's max over the {card.n_texts_fired} of "
             f"{card.n_texts} texts where it fires)"),
        ),
        ("Filtered", esc(card.filtered)),
    ]


def _examples_html(card: FeatureCard) -> str:
    """The card's top texts (with a colour legend) and the texts beyond them, or why there are none."""
    if not card.examples:
        if card.n_texts:
            return "<p>It does not fire on any of your texts (BOS excluded).</p>"
        return "<p>No prompts were searched.</p>"
    scale = card.examples[0].max_act
    legend = "".join(
        f'<span style="{_bg(scale * q, scale)}">{q * scale:.2f}</span>' for q in (0.1, 0.25, 0.5, 0.75, 1.0)
    )
    examples = (
        f'<p class="sub legend">Colour = activation of feature #{card.feature} on each token '
        f"(hover for the value): {legend} · the peak token is outlined.</p>"
        + "".join(example_html(ex, scale) for ex in card.examples)
    )
    if card.more_examples:
        examples += ("<h2>Beyond the top texts</h2><p class=\"sub\">Lower activation levels (quantiles of each "
                     "text's max where it fires) and the top text of every other group where it fires.</p>"
                     + "".join(example_html(ex, scale, why=ex.label) for ex in card.more_examples))
    return examples


def ansi_allowed(stream, mode: str) -> bool:
    """Colour only on a terminal (mode "auto"), unless forced; NO_COLOR (no-color.org) turns auto off."""
    import os

    if mode == "always":
        return True
    if mode == "never":
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def render_index(entries: list[dict], title: str) -> str:
    """``index.html``: one row per card in the folder, linking it, with where the feature came from.

    Args:
        entries: dicts with ``feature``, ``file`` (the card's file name), ``origin``, ``firing_rate``,
            ``typical_max``, ``density`` and ``top_example``, e.g. read back from each card's JSON; ``label`` for a family's card (its link's
            text, e.g. ``#409+#501``; a feature's is ``#id``); and ``corpus_density`` (with
            ``corpus``, its name) for cards with a mined corpus. The corpus column is shown only when
            some card has one.
    """
    esc = html.escape
    with_corpus = any(e.get("corpus_density") is not None for e in entries)
    with_labels = any(e.get("label_scores") for e in entries)

    def label_cell(e: dict) -> str:  # the first label's scores ("label_scores": text), when some card has one
        return f'<td>{esc(e.get("label_scores") or "-")}</td>' if with_labels else ""

    def corpus_cell(e: dict) -> str:
        if not with_corpus:
            return ""
        if e.get("corpus_density") is None:
            return '<td class="val">-</td>'
        return f'<td class="val" title="{esc(str(e.get("corpus") or ""), quote=True)}">{_pct(float(e["corpus_density"]))}</td>'

    rows = "".join(
        f'<tr><td><a href="{esc(e["file"], quote=True)}">{esc(e.get("label") or "#" + str(int(e["feature"])))}</a></td>'
        f'<td>{esc(e.get("origin") or "-")}</td>'
        f'<td class="val">{_pct(float(e["density"])) if e.get("density") is not None else "-"}</td>'
        f'<td class="val">{_pct(float(e.get("firing_rate") or 0.0))}</td><td class="val">{float(e.get("typical_max") or 0.0):.3f}</td>'
        f'<td class="toks">{esc(e.get("top_example") or "-")}</td>'
        f'{corpus_cell(e)}{label_cell(e)}<td>{esc(e.get("title") or "")}</td></tr>'
        for e in entries
    )
    corpus_head = "<th>corpus density</th>" if with_corpus else ""
    label_head = "<th>label scores (corpus)</th>" if with_labels else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Feature cards</title>
<style>{_CSS} table.index td, table.index th {{ padding: .3rem .8rem; text-align: left; }}</style></head>
<body>
<h1>Feature cards</h1>
<p class="sub">{esc(title)}</p>
<p class="sub">Every card in this folder. "From" says where the feature came from: its Chapter 2 group and rank,
q-value, replication and verdict, or how it was chosen. Density: in the SAE's training tokens (its sparsity
file); firing rate and typical max: on your texts.</p>
<table class="index"><tr><th>feature</th><th>from</th><th>density</th><th>firing rate</th><th>typical max</th><th>top example [peak]</th>{corpus_head}{label_head}<th>model · SAE · hook</th></tr>
{rows}</table>
</body></html>
"""


# --- a feature family's card ------------------------------------------------------------------------------


def member_table(card: FamilyCard) -> tuple[list[str], list[list]]:
    """Each member's own row: ``(headings, rows)`` for the terminal, the page and ``MI5_<name>_members.csv``."""
    headings = ["member", "density", "firing rate", "typical max", "carries (tokens)", "promotes", "peaks on (texts)"]
    rows = [[f"#{r.feature}", _pct(r.density) if r.density is not None else "-", _pct(r.firing_rate),
             f"{r.typical_max:.3f}" if r.n_texts_fired else "never fires", r.carries,
             safe_text(repr(r.promoted[0].token)) if r.promoted else "-",
             ", ".join(f"{safe_text(repr(w))} {n}" for w, n in r.peak_words) or "-"] for r in card.rows]
    return headings, rows


def _member_head(card: FamilyCard, ex: Example) -> str:
    return f"#{card.peak_members[ex.text_index]}"


def format_family_text(card: FamilyCard, title: str, color: bool) -> str:
    """A family's card as terminal text (ANSI colour only when ``color``); activations are the family's."""
    fired, total = card.fired_total
    per_source = ", ".join(f"{s} {_pct(a / b if b else 0)}" for s, (a, b) in card.fired_by_source.items())
    lines = [f"=== Family {card.label} · {title}", *([f"From: {card.origin}"] if card.origin else []),
             f"Family activation: {SCALE_NOTE}.",
             f"Firing rate on your texts: {_pct(card.firing_rate)} ({fired} of {total} tokens, where any member fires)",
             f"  by source: {per_source}",
             (f"Typical max family activation: {card.typical_max:.3f} (median of each text's max over the "
              f"{card.n_texts_fired} of {card.n_texts} texts where it fires)"),
             f"Filtered: {card.filtered}"]
    lines = [textwrap.fill(line, 100, subsequent_indent="    ", break_on_hyphens=False) for line in lines]
    lines += ["", "Members, each on its own (carries: tokens where it gives the family activation):",
              *("  " + line for line in format_table(*member_table(card)).split("\n")), ""]
    if card.examples:
        key = "colour = activation, bold underlined = peak" if color else "[token:activation], [[peak]]"
        lines.append(f"Top {len(card.examples)} texts by family activation ({key}; the member at the peak first):")
        scale = card.examples[0].max_act
        lines += _example_lines(card.examples, scale, color,
                                lambda ex: f"{ex.rank:>2}. [{ex.source}] {_member_head(card, ex)}")
        if card.more_examples:
            lines.append("Beyond the top texts (lower activation levels, and other groups where it fires):")
            lines += _example_lines(card.more_examples, scale, color,
                                    lambda ex: f"{ex.rank:>2}. [{ex.source}] {_member_head(card, ex)} {ex.label}:")
    elif card.n_texts:
        lines.append("No member fires on any of your texts (BOS excluded): no examples to show.")
    else:
        lines.append("No prompts were searched.")
    lines += ["", ("What it writes (Σ typical max × W_dec[m] @ W_U: the direct logit effect of every member at its "
                   "typical max):"), *_logit_columns(card.promoted, card.suppressed)]
    return "\n".join(lines)


def render_family_html(card: FamilyCard, title: str, is_demo: bool, figure_png: bytes | None = None,
                       extra_html: str = "") -> str:
    """A family's card as a self-contained HTML page (inline CSS and figure, no scripts), like a feature's;
    ``extra_html`` goes after the examples (the label scores)."""
    esc = html.escape
    fired, total = card.fired_total
    headings, rows = member_table(card)
    members = ("<table class=\"logits\"><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headings) + "</tr>"
               + "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in rows)
               + "</table>")
    stats = [*([("From", card.origin)] if card.origin else []), ("Family activation", SCALE_NOTE),
             ("Firing rate on your texts", f"{_pct(card.firing_rate)} ({fired} of {total} tokens, where any member fires)"),
             ("By source", ", ".join(f"{s} {_pct(a / b if b else 0)}" for s, (a, b) in card.fired_by_source.items())),
             ("Typical max family activation", (f"{card.typical_max:.3f} (median of each text's max over the "
                                                f"{card.n_texts_fired} of {card.n_texts} texts where it fires)")),
             ("Filtered", card.filtered)]
    scale = card.examples[0].max_act if card.examples else 1.0
    examples = "".join(example_html(ex, scale, why=f"{_member_head(card, ex)} fired at the peak")
                       for ex in card.examples)
    examples += "".join(example_html(ex, scale, why=f"{ex.label}; {_member_head(card, ex)} fired at the peak")
                        for ex in card.more_examples)
    figure = _figure_html(figure_png, f"family {esc(card.name)} figure")
    logit_scale = max((abs(r.value) for r in card.promoted + card.suppressed), default=1.0)
    demo = DEMO_NOTE if is_demo else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Family {esc(card.label)}</title>
<style>{_CSS}</style></head>
<body>
<h1>Family {esc(card.label)}</h1>
<div class="sub">{esc(title)}</div>
{demo}
<h2>How often it fires</h2>
<table class="stats">{"".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in stats)}</table>
<h2>Its members, each on its own</h2>
{members}
<h2>Where it fires: top {len(card.examples)} texts by family activation</h2>
{examples or "<p>No member fires on any of your texts (BOS excluded).</p>"}
{extra_html}
<h2>What it writes: Σ typical max × W_dec[m] @ W_U</h2>
<p class="sub">Every member's decoder direction, scaled by its typical max, pushed straight through the unembedding:
what Chapter 4 steers the family with.</p>
<div class="cols"><div><b>Most promoted</b>{_logit_table(card.promoted, "up", logit_scale)}</div>
<div><b>Most suppressed</b>{_logit_table(card.suppressed, "down", logit_scale)}</div></div>
{figure}
</body></html>
"""
