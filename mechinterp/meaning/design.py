"""The design checks: how two prompt sets differ besides the concept, before any feature is looked at.

Hand-written prompt sets differ in more than the concept: length, extra words, punctuation. A feature
can pick up any of these, and a held-out split cannot catch a *systematic* difference, so Chapter 2
first compares the two sets themselves: token length (Mann-Whitney, or Wilcoxon signed-rank for
paired lines), tokens found in more prompts of one set (one-sided Fisher, BH over token types),
sentence-final punctuation (two-sided Fisher) and, for paired lines, the tokens each pair differs in.

It also holds the prompts as the model saw them (:class:`TokenizedPrompts`), which the verdicts read too.
Everything here is numpy/scipy on token ids; the tests live in ``tests/test_confounds.py``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

from mechinterp.meaning.options import ConfoundSettings
from mechinterp.meaning.stats import (
    auroc,
    benjamini_hochberg,
    fisher_greater,
    mann_whitney,
    wilcoxon_signed_rank,
)

# Sentence-final punctuation of a prompt ("." "!" "?!"); the injection test replaces it too.
TRAILING_PUNCT = re.compile(r"[^\w\s]+$")


@dataclass
class TokenizedPrompts:
    """The prompts of one set as the model saw them, BOS excluded.

    Attributes:
        texts: the prompt texts, ``[n_prompts]``.
        ids: per prompt its text-token ids, ``[n_tokens_i]`` int (no BOS, no padding).
        strs: per prompt its token strings, each id decoded on its own (e.g. ``' the'``, ``'!'``).
    """

    texts: list[str]
    ids: list[np.ndarray]
    strs: list[list[str]]

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.ids) == len(self.strs):
            raise ValueError(
                f"texts, ids and strs differ in length: {len(self.texts)}, {len(self.ids)}, {len(self.strs)}"
            )
        self.ids = [np.asarray(i, dtype=np.int64).reshape(-1) for i in self.ids]
        self.strs = [list(s) for s in self.strs]
        for i, (ids, strs) in enumerate(zip(self.ids, self.strs)):
            if len(ids) == 0:
                raise ValueError(f"prompt {i} ({self.texts[i]!r}) has no text tokens")
            if len(ids) != len(strs):
                raise ValueError(f"prompt {i}: {len(ids)} ids but {len(strs)} token strings")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """``[n_prompts]`` number of text tokens per prompt."""
        return np.array([len(i) for i in self.ids], dtype=np.int64)

    def token_matrix(self) -> np.ndarray:
        """``[n_prompts, longest]`` token ids, right-padded with -1."""
        out = np.full((len(self), int(self.lengths.max())), -1, dtype=np.int64)
        for r, ids in enumerate(self.ids):
            out[r, : len(ids)] = ids
        return out


@dataclass
class LengthCheck:
    """Token lengths of the two sets and the test of their difference."""

    test: str  # "Mann-Whitney" or "Wilcoxon signed-rank" (paired)
    mean_group: float
    mean_baseline: float
    median_group: float
    median_baseline: float
    auroc: float  # P(group prompt longer than baseline prompt), ties half
    effect_size: float  # rank-biserial: 2 * auroc - 1, or for pairs (r+ - r-) / (r+ + r-) of the differences
    p_value: float
    differs: bool


@dataclass
class TokenCount:
    """One token type's presence in the two sets."""

    token: str
    token_id: int
    prompts_group: int  # prompts containing it
    prompts_baseline: int
    count_group: int  # occurrences
    count_baseline: int
    more_in: str  # "group" or "baseline"
    p_value: float  # one-sided Fisher exact, in the direction of more_in
    q_value: float  # Benjamini-Hochberg over all token types, per direction


@dataclass
class EndingCount:
    """How many prompts of each set end with one kind of sentence-final punctuation."""

    ending: str  # e.g. ".", "!", "?!", or "none"
    group: int
    baseline: int
    p_value: float  # two-sided Fisher exact: share of this ending, group vs baseline


@dataclass
class PairDiff:
    """Tokens that differ between line i of the group and line i of the baseline (paired designs)."""

    line: int  # 0-based
    only_group: list[str]
    only_baseline: list[str]


@dataclass
class OnlyWords:
    """Content words found in the group's prompts and in none of the baseline's, as one set.

    A concept's words, or a topic's, are each too rare to pass the per-token test (a word in 4 of 60
    prompts is no evidence on its own); together they can cover most of the group. Read with the
    group's concept in mind: its own words belong here, anything else is a theme the baseline lacks.
    """

    words: list[tuple[str, int]]  # (token, prompts of the group holding it), most common first
    n_prompts: int  # group prompts holding at least one of them
    size: int  # group prompts


@dataclass
class DesignReport:
    """How two prompt sets differ besides the concept, before any feature is looked at."""

    group: str
    baseline: str
    n_group: int
    n_baseline: int
    length: LengthCheck
    tokens: list[TokenCount]  # p < alpha in either direction, strongest first
    endings: list[EndingCount]
    pairs: list[PairDiff] | None  # paired designs only
    warnings: list[str] = field(default_factory=list)
    only_group: OnlyWords | None = None  # content words in group prompts and in no baseline prompt

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ending(text: str) -> str:
    m = TRAILING_PUNCT.search(text.rstrip())
    return m.group(0) if m else "none"


def vocabulary(*sets: TokenizedPrompts) -> tuple[dict[int, int], list[int], list[str]]:
    """Token id -> column, and per column its id and string (first spelling seen)."""
    col: dict[int, int] = {}
    ids: list[int] = []
    strs: list[str] = []
    for tp in sets:
        for row_ids, row_strs in zip(tp.ids, tp.strs):
            for t, s in zip(row_ids.tolist(), row_strs):
                if t not in col:
                    col[t] = len(ids)
                    ids.append(t)
                    strs.append(s)
    return col, ids, strs


def token_counts(tp: TokenizedPrompts, col: dict[int, int]) -> np.ndarray:
    """``[n_prompts, vocab]`` occurrences of each token type per prompt."""
    out = np.zeros((len(tp), len(col)), dtype=np.int64)
    for r, row in enumerate(tp.ids):
        np.add.at(out[r], [col[t] for t in row.tolist()], 1)
    return out


def pair_differences(group: TokenizedPrompts, baseline: TokenizedPrompts) -> list[PairDiff]:
    """For each line pair, the tokens only in the group line and only in the baseline line (an
    alignment of the two token sequences, so a token moved by an insertion does not count)."""
    if len(group) != len(baseline):
        raise ValueError(f"paired sets need equal sizes, got {len(group)} and {len(baseline)}")
    out = []
    for i, (a, b) in enumerate(zip(baseline.strs, group.strs)):
        only_g: list[str] = []
        only_b: list[str] = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
            if op != "equal":
                only_b += a[i1:i2]
                only_g += b[j1:j2]
        out.append(PairDiff(i, only_g, only_b))
    return out


def check_design(
    group: TokenizedPrompts,
    baseline: TokenizedPrompts,
    group_name: str = "group",
    baseline_name: str = "baseline",
    paired: bool = False,
    settings: ConfoundSettings | None = None,
) -> DesignReport:
    """Compare two prompt sets in token length, token content and sentence-final punctuation.

    Args:
        group, baseline: the two sets' text tokens (BOS excluded).
        paired: line i of the group belongs with line i of the baseline (then lengths are compared
            with the Wilcoxon signed-rank test, and every pair's differing tokens are listed).
    """
    s = settings or ConfoundSettings()
    names = (group_name, baseline_name)
    length = length_check(group, baseline, paired, s)
    tokens = token_differences(group, baseline, s)
    endings = ending_counts(group, baseline)
    pairs = pair_differences(group, baseline) if paired else None
    warnings = [
        *_length_warning(length, names),
        *_token_warnings(tokens, names, s),
        *_ending_warnings(endings, len(group), len(baseline), names, s),
        *_pair_warnings(pairs, group_name),
    ]
    return DesignReport(group_name, baseline_name, len(group), len(baseline), length, tokens, endings, pairs, warnings,
                        only_words(group, baseline))


CONTENT_WORD = re.compile(r"^[^\W\d_]{3,}$")  # letters only, 3 or more: not ' a', ',', ' 12' or a word piece


def only_words(group: TokenizedPrompts, baseline: TokenizedPrompts) -> OnlyWords:
    """The content words (tokens of 3+ letters) that group prompts use and baseline prompts never do."""
    in_baseline = {s for strs in baseline.strs for s in strs}
    counts: Counter[str] = Counter()
    holding = 0
    for strs in group.strs:
        own = {s for s in strs if s not in in_baseline and CONTENT_WORD.match(s.strip())}
        counts.update(own)
        holding += bool(own)
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return OnlyWords(words, holding, len(group))


def length_check(group: TokenizedPrompts, baseline: TokenizedPrompts, paired: bool, s: ConfoundSettings) -> LengthCheck:
    """The sets' token lengths, and whether they differ enough to warn about (significant *and* big)."""
    ng, nb = len(group), len(baseline)
    lg, lb = group.lengths.astype(np.float64), baseline.lengths.astype(np.float64)
    a = float(auroc(lg[:, None], lb[:, None])[0])
    if paired:
        if ng != nb:
            raise ValueError(f"paired sets need equal sizes, got {ng} and {nb}")
        w = wilcoxon_signed_rank(lg[:, None], lb[:, None])
        p_len, effect, test = float(w.p_value[0]), float(w.rank_biserial[0]), "Wilcoxon signed-rank"
    else:
        p_len, effect, test = float(mann_whitney(lg[:, None], lb[:, None])[1][0]), 2.0 * a - 1.0, "Mann-Whitney"
    differs = p_len < s.length_warn_p and abs(effect) >= 2.0 * s.length_warn_auroc
    return LengthCheck(test, float(lg.mean()), float(lb.mean()), float(np.median(lg)), float(np.median(lb)),
                       a, effect, p_len, bool(differs))


def token_differences(group: TokenizedPrompts, baseline: TokenizedPrompts, s: ConfoundSettings) -> list[TokenCount]:
    """Every token type found in a larger share of one set's prompts at p < alpha (one-sided Fisher in
    the direction it leans, BH over all token types per direction), strongest first."""
    ng, nb = len(group), len(baseline)
    col, ids, strs = vocabulary(group, baseline)
    cg, cb = token_counts(group, col), token_counts(baseline, col)
    kg, kb = (cg > 0).sum(axis=0), (cb > 0).sum(axis=0)
    p_up, p_down = fisher_greater(kg, ng, kb, nb), fisher_greater(kb, nb, kg, ng)
    q_up, q_down = benjamini_hochberg(p_up), benjamini_hochberg(p_down)
    tokens = []
    for j in range(len(ids)):
        up = kg[j] / ng >= kb[j] / nb
        p, q = (p_up[j], q_up[j]) if up else (p_down[j], q_down[j])
        if p < s.alpha:
            tokens.append(TokenCount(
                strs[j], ids[j], int(kg[j]), int(kb[j]), int(cg[:, j].sum()), int(cb[:, j].sum()),
                "group" if up else "baseline", float(p), float(q),
            ))
    tokens.sort(key=lambda t: (t.p_value, -(t.prompts_group + t.prompts_baseline), t.token_id))
    return tokens


def ending_counts(group: TokenizedPrompts, baseline: TokenizedPrompts) -> list[EndingCount]:
    """How many prompts of each set end with each kind of sentence-final punctuation, most common first."""
    ng, nb = len(group), len(baseline)
    eg = Counter(_ending(t) for t in group.texts)
    eb = Counter(_ending(t) for t in baseline.texts)
    endings = []
    for ending in sorted(set(eg) | set(eb), key=lambda e: -(eg[e] + eb[e])):
        table = [[eg[ending], ng - eg[ending]], [eb[ending], nb - eb[ending]]]
        endings.append(EndingCount(ending, eg[ending], eb[ending], float(sps.fisher_exact(table).pvalue)))
    return endings


def _length_warning(length: LengthCheck, names: tuple[str, str]) -> list[str]:
    if not length.differs:
        return []
    longer = names[0] if length.mean_group > length.mean_baseline else names[1]
    return [(f"token length: {longer} prompts are longer (mean {length.mean_group:.1f} vs {length.mean_baseline:.1f} "
             f"tokens, {length.test} p = {length.p_value:.2g}); features can differ through length or position alone")]


def _token_warnings(tokens: list[TokenCount], names: tuple[str, str], s: ConfoundSettings) -> list[str]:
    warnings = []
    for side, name, other in (("group", *names), ("baseline", *names[::-1])):
        flagged = [t for t in tokens if t.more_in == side and t.q_value < s.token_warn_q]
        if flagged:
            shown = ", ".join(
                f"{t.token!r} ({t.prompts_group if side == 'group' else t.prompts_baseline} vs "
                f"{t.prompts_baseline if side == 'group' else t.prompts_group})" for t in flagged[:8]
            )
            warnings.append(f"tokens more common in {name} than in {other} prompts (prompts with it): {shown}"
                            + (" ..." if len(flagged) > 8 else ""))
    return warnings


def _ending_warnings(endings: list[EndingCount], ng: int, nb: int, names: tuple[str, str],
                     s: ConfoundSettings) -> list[str]:
    return [f"sentence endings: {e.ending!r} ends {e.group} of {ng} {names[0]} and "
            f"{e.baseline} of {nb} {names[1]} prompts (Fisher p = {e.p_value:.2g})"
            for e in endings if e.p_value < s.ending_warn_p]


def _pair_warnings(pairs: list[PairDiff] | None, group_name: str) -> list[str]:
    if pairs is None:
        return []
    # A token added in a fifth of the pairs is systematic, not the varied wording of a concept. Each pair
    # counts a token once; tokens tied in count are listed in the order they first appear (a set's order
    # would change with Python's string hashing from run to run).
    extra = Counter(t for d in pairs for t in dict.fromkeys(d.only_group))
    common = [f"{t!r} in {c}" for t, c in extra.most_common(5) if c >= max(2, 0.2 * len(pairs))]
    if not common:
        return []
    return [f"paired lines: {group_name} lines add the same token to many pairs ("
            + ", ".join(common) + f" of {len(pairs)} pairs)"]
