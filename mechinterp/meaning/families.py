"""Feature families: a concept the SAE splits across several features.

Real SAEs rarely give one concept one feature. With 24,576 features, "happy" is carried by a feature
for ' happy' and ' glad', another for ' thrilled' and ' delighted', and so on (feature splitting); a
general feature can also fall silent exactly where a more specific one fires (feature absorption,
arXiv 2409.14507). Each such feature is judged on its own by :mod:`mechinterp.meaning.verdicts`, and
each fails the concept test in the same way: drop its top words, and the group's remaining prompts
use the *other* features' words, on which it is silent. A concept split in half can never pass one
feature at a time, however many prompts there are.

So, for a group's judged features that carry part of its distinctive words and are not explained by
a confound (verdict ``context``), this module tests small sets of them together:

* **members**: features higher in the group, most of whose group peaks are on words that mark the
  group, with largely disjoint word sets (overlap coefficient <= :data:`WORD_OVERLAP`) that rarely fire
  in the same group prompt (<= :data:`COFIRE`; a topic and a concept fire *together*, split halves of
  one concept fire apart);
* **the family's activation**: per prompt, the maximum over members of each member's statistic
  divided by its typical max (the median of its per-prompt values where it fires, over both sets: the
  scale Chapters 3 and 4 use for a family too), so members on different scales count alike; its
  peak is the peak of the member that gives the maximum;
* **the test**: exactly the single-feature concept test on that activation (several distinctive words,
  generalisation to prompts without the top words, the length, token and position controls), via
  :func:`~mechinterp.meaning.verdicts.explain_features`;
* **the choice**: every family of 2 to :data:`FAMILY_MAX` members is tried (no smaller family of the
  same members may pass on its own); passing families are taken smallest first, then by how well the
  prompts without the top words separate, and no feature joins two families. A family whose words are
  mostly those of a feature that passes alone is not reported: that concept has its feature already.

A family that passes is one finding: ``concept (split)``. It says what the SAE represents (the group's
words, shared among features); it does not say the members are one feature, and a member's own card
or ablation covers only its part of the words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mechinterp.meaning.design import TokenizedPrompts
from mechinterp.meaning.options import ConfoundSettings
from mechinterp.meaning.verdicts import (
    CONCEPT,
    CONTEXT,
    FeatureActivity,
    FeatureReport,
    Verdict,
    explain_features,
)

CONCEPT_SPLIT = "concept (split)"
FAMILY_MAX = 3  # members per family: 3 features already cover a concept split in three
# Candidates tried, best AUROC first: 12 give 66 pairs and 220 triples, one explain_features call.
FAMILY_CANDIDATES = 12
# Split halves of a concept share no words; two features that share many are duplicates, not halves.
WORD_OVERLAP = 0.25
# Halves of a concept fire in different prompts (one concept word per prompt is typical); a topic word
# and a concept word in the same prompt make two features fire together.
COFIRE = 0.5


@dataclass
class Family:
    """Several features that together pass Chapter 2's concept test, where none passes alone.

    Attributes:
        members: feature ids, ascending.
        member_words: per member, its distinctive peak words (those that mark the group).
        member_generalisation: per member, its own AUROC on the prompts without its top words (nan: too few).
        cofiring: the largest share of a member's firing group prompts in which another member fires too.
        report: evidence, controls and generalisation of the family's activation (see the module docstring).
        verdict: ``concept (split)`` and its sentence.
    """

    members: tuple[int, ...]
    member_words: list[list[str]]
    member_generalisation: list[float]
    cofiring: float
    report: FeatureReport
    verdict: Verdict

    @property
    def label(self) -> str:
        """The members joined by '+', as feature_stats.csv's ``family`` column writes it (``12+345``)."""
        return "+".join(str(m) for m in self.members)

    @property
    def name(self) -> str:
        return " + ".join(f"#{m}" for m in self.members)

    @property
    def words(self) -> list[str]:
        """The family's distinctive words: those of its combined activation."""
        return list(self.report.evidence.separating_tokens)

    @property
    def auroc(self) -> float:
        """The family's AUROC, group over baseline, on all prompts."""
        return self.report.evidence.auroc


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def candidates(reports: list[FeatureReport], s: ConfoundSettings) -> list[int]:
    """Indices into ``reports`` of the features that may be part of a split concept, best AUROC first."""
    picked = [
        k for k, rep in enumerate(reports)
        if rep.verdict.verdict == CONTEXT and rep.evidence.direction == "up"
        and rep.evidence.separating_tokens and rep.evidence.separating_share >= s.separating_share
    ]
    picked.sort(key=lambda k: (-reports[k].evidence.auroc, reports[k].evidence.feature))
    return picked[:FAMILY_CANDIDATES]


def _compatible(i: int, j: int, words: list[set[str]], fired: np.ndarray) -> tuple[bool, float]:
    """(may ``i`` and ``j`` be in one family, their co-firing share): disjoint words, rarely together."""
    both = int((fired[:, i] & fired[:, j]).sum())
    least = max(min(int(fired[:, i].sum()), int(fired[:, j].sum())), 1)
    cofire = both / least
    return _overlap(words[i], words[j]) <= WORD_OVERLAP and cofire <= COFIRE, cofire


def subsets(words: list[set[str]], fired: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
    """Every set of 2 to :data:`FAMILY_MAX` candidates (indices into ``words``) whose members are pairwise
    compatible, with its largest pairwise co-firing share."""
    n = len(words)
    pair = {}
    for i, j in itertools.combinations(range(n), 2):
        pair[i, j] = _compatible(i, j, words, fired)
    out = []
    for size in range(2, FAMILY_MAX + 1):
        for combo in itertools.combinations(range(n), size):
            links = [pair[i, j] for i, j in itertools.combinations(combo, 2)]
            if all(ok for ok, _ in links):
                out.append((combo, max(c for _, c in links)))
    return out


def typical_max(values: np.ndarray) -> np.ndarray:
    """``[n_features]`` median of each column's non-zero values (1 where a column never fires): one
    outlier prompt does not set a member's scale."""
    med = np.ones(values.shape[1])
    for j in range(values.shape[1]):
        on = values[:, j][values[:, j] > 0]
        if len(on):
            med[j] = float(np.median(on))
    return med


def combined(acts: FeatureActivity, cols: list[int], scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A family's per-prompt activation and peak: the max over members of value / scale, and the peak
    position of the member giving it (the first such member on ties); -1 where no member fires."""
    norm = acts.value[:, cols] / scale[cols]
    best = np.argmax(norm, axis=1)
    rows = np.arange(len(norm))
    value = norm[rows, best]
    peak = np.where(value > 0, acts.peak[:, cols][rows, best], -1)
    return value, peak


def find_families(
    group: TokenizedPrompts,
    baseline: TokenizedPrompts,
    group_acts: FeatureActivity,
    baseline_acts: FeatureActivity,
    reports: list[FeatureReport],
    names: tuple[str, str] = ("group", "baseline"),
    settings: ConfoundSettings | None = None,
) -> list[Family]:
    """The families among one contrast's judged features (see the module docstring).

    Args:
        group, baseline, group_acts, baseline_acts: as for
            :func:`~mechinterp.meaning.verdicts.explain_features` (all prompts of both sets).
        reports: the features' reports with their verdicts, in the order of ``group_acts.features``.
    """
    s = settings or ConfoundSettings()
    cand = candidates(reports, s)
    if len(cand) < 2:
        return []
    words = [set(reports[k].evidence.separating_tokens) for k in cand]
    fired = group_acts.peak[:, cand] >= 0
    combos = subsets(words, fired)
    if not combos:
        return []
    scale = typical_max(np.concatenate([group_acts.value, baseline_acts.value]))
    cols = [[cand[i] for i in combo] for combo, _ in combos]
    fam_g = FeatureActivity(np.arange(len(cols)), *np.stack([combined(group_acts, c, scale) for c in cols], axis=2))
    fam_b = FeatureActivity(np.arange(len(cols)), *np.stack([combined(baseline_acts, c, scale) for c in cols], axis=2))
    fam_reports = explain_features(group, baseline, fam_g, fam_b, *names, encode=None, settings=s)
    covered = concept_words(reports)
    passing = {combo: rep for (combo, _), rep in zip(combos, fam_reports)
               if rep.verdict.verdict == CONCEPT and not is_covered(rep, covered)}
    # A family must need every member: a triple whose pair already passes is that pair plus a passenger.
    passing = {c: r for c, r in passing.items()
               if not any(sub in passing for sub in itertools.combinations(c, len(c) - 1) if len(sub) >= 2)}
    cofire = dict(combos)
    chosen, used = [], set()
    for combo in sorted(passing, key=lambda c: (len(c), -_gen(passing[c]), -passing[c].evidence.auroc, c)):
        if used.isdisjoint(combo):
            used.update(combo)
            chosen.append(_family([reports[cand[i]] for i in combo], cofire[combo], passing[combo], names))
    return sorted(chosen, key=lambda f: -f.auroc)


def concept_words(reports: list[FeatureReport]) -> list[set[str]]:
    """The word sets of the features that pass as a concept on their own."""
    return [set(r.evidence.separating_tokens) for r in reports if r.verdict.verdict == CONCEPT]


def is_covered(rep: FeatureReport, covered: list[set[str]]) -> bool:
    """The family's words are mostly those of a single concept feature: the concept already has its
    feature, and the members are finer parts of it (as a general feature and the specific ones that
    absorb parts of it), so they are not reported as a second finding."""
    words = set(rep.evidence.separating_tokens)
    return any(_overlap(words, c) > WORD_OVERLAP for c in covered)


def _gen(rep: FeatureReport) -> float:
    a = rep.generalisation.auroc
    return a if np.isfinite(a) else 0.0


def _family(members: list[FeatureReport], cofiring: float, rep: FeatureReport,
            names: tuple[str, str]) -> Family:
    order = sorted(range(len(members)), key=lambda i: members[i].evidence.feature)
    members = [members[i] for i in order]
    ids = tuple(int(m.evidence.feature) for m in members)
    member_words = [list(m.evidence.separating_tokens) for m in members]
    member_gen = [float(m.generalisation.auroc) for m in members]
    g = rep.generalisation
    parts = "; ".join(f"#{f} on {' '.join(map(repr, w[:4]))}{' ...' if len(w) > 4 else ''}"
                      for f, w in zip(ids, member_words))
    alone = [a for a in member_gen if np.isfinite(a)]
    alone_s = (f"; alone, each separates the {names[0]} prompts without its own top words at most "
               f"{max(alone):.2f}" if alone else "")
    rep.verdict = Verdict(ids[0], CONCEPT_SPLIT, (
        f"{' + '.join(f'#{f}' for f in ids)} together separate {names[0]} prompts (AUROC {rep.evidence.auroc:.2f}) "
        f"and still separate the {g.n_group} without {', '.join(map(repr, g.without_tokens))} "
        f"(AUROC {g.auroc:.2f}); {parts}{alone_s}"
    ))
    return Family(ids, member_words, member_gen, cofiring, rep, rep.verdict)


def member_verdict(family: Family, own: Verdict) -> Verdict:
    """A member's verdict: the family's, followed by why it is not a concept on its own."""
    alone = own.evidence.split("not a concept: ", 1)[-1]
    return Verdict(own.feature, CONCEPT_SPLIT, f"part of {family.name}: {family.verdict.evidence}; alone: {alone}")
