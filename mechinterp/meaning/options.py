"""Chapter 2's options, each written once: the contrast's (:class:`MeaningOptions`, the script's
"statistics" flags) and the thresholds of the design checks, controls and verdicts (:class:`ConfoundSettings`).

Every field is an :func:`~mechinterp.core.options.option`: ``mechinterp.cli`` builds the script's flags
from :class:`MeaningOptions` and turns the parsed flags back into it, and a notebook builds it directly::

    MeaningOptions(holdout=0.5, paired=True)

:class:`ConfoundSettings` has no flags (its defaults are tuned for 30-60 prompts per set); its fields
carry their help all the same, and the run record stores them. Both the design checks and the
verdicts read it, so it lives here rather than in either of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mechinterp.core.errors import UserError
from mechinterp.core.options import fraction, option, positive_int

AUTO_HOLDOUT = 0.5  # the held-out share when it is on by default
AUTO_HOLDOUT_MIN = 20  # the held-out split is on by default when every group has this many prompts


@dataclass(frozen=True)
class ConfoundSettings:
    """Thresholds of the design checks, controls and verdicts; the defaults are tuned for 30-60
    prompts per set (see each comment for why)."""

    # Controls re-test single, already selected features, so a nominal level is right (no FDR).
    alpha: float = option(
        0.05, "nominal level: a controlled difference vanishes only when it is no longer significant at it; "
        "generalisation and the design check's token list are judged at it too")
    # Survival rules a confound *out*: at 0.05, one length or position artefact in 40 would be waved
    # through by chance alone.
    survive_p: float = option(0.01, "a difference survives a control only at p below this")
    # Below half, more than half the difference is due to the confound.
    retained: float = option(
        0.5, "a control explains a difference when less than this share of the effect (AUROC - 0.5) is left "
        "within its strata")
    # With fewer, a real difference (AUROC 0.8) would look halved by chance too often (sd of AUROC ~0.1 at 8 v 8).
    min_informative: int = option(
        8, "a difference vanishes only with this many prompts of each set in strata that hold both sets",
        type=positive_int)
    # Concept words in free text rarely share one position this often.
    position_share: float = option(
        0.6, "a feature is position-locked when this share of its firing prompts (on the higher side) peak at "
        "one absolute position")
    # One spurious correlation per hundred features should not cost a real concept its verdict.
    length_corr_p: float = option(
        0.01, "a within-group correlation with length blocks a concept verdict at p below this")
    # A one-token shift of sentences with sd ~1.5 tokens gives AUROC ~0.68; big sets alone should not
    # trigger a warning about a tenth of a token.
    length_warn_p: float = option(0.01, "design check: warn about token length at Mann-Whitney p below this ...")
    length_warn_auroc: float = option(0.1, "... and when the AUROC is at least this far from 0.5")
    ending_warn_p: float = option(
        0.01, "design check: a sentence ending whose share differs at Fisher p below this is reported")
    # Single concept words (each in a few prompts) do not reach this; systematic extra words do.
    token_warn_q: float = option(
        0.05, "design check: stray tokens are warned about at BH q below this, over all token types")
    # A feature that peaks anywhere also peaks, now and then, on the group's stray words; a concept
    # feature peaks on its words most of the time.
    min_separating: int = option(
        3, "a concept fires on at least this many distinct peak tokens that separate the groups",
        type=positive_int)
    separating_ratio: float = option(
        2.0, "a separating peak token is found in over this many times the share of the higher side's "
        "prompts as of the other side's")
    separating_share: float = option(
        0.5, "a concept's separating peak tokens hold at least this share of the higher side's peaks")
    # A concept has more than one word: the prompts left, which use only other words, must still separate.
    generalisation_cover: float = option(
        0.5, "generalisation: drop the feature's top distinctive words covering this share of its distinctive "
        "peaks")
    generalisation_min: int = option(
        5, "generalisation: test the prompts left only with at least this many per side", type=positive_int)
    generalisation_auroc: float = option(
        0.7, "generalisation: the prompts left must separate with at least this AUROC (and p < alpha)")
    # A position feature peaks on whatever token sits at its position.
    lexical_share: float = option(
        0.5, "one token type carries a feature when it peaks on that token in at least this share of its "
        "firing prompts of the higher set")
    injection_reproduces: float = option(
        0.5, "injection: the token alone must close at least this share of the gap between the sets")
    injection: str = option(
        "candidates", "which features get the (model-running) injection test: candidates (those a token may "
        "carry: not concept, token control not survived), all, or none", choices=("candidates", "all", "none"))
    injection_prompts: int = option(
        300, "injection: at most this many lower-set prompts get the token (a seeded sample beyond it)",
        type=positive_int)
    top_tokens: int = option(8, "peak tokens listed per feature in the evidence", type=positive_int)

    def __post_init__(self) -> None:
        for name in ("alpha", "survive_p", "lexical_share", "retained", "length_corr_p", "length_warn_p",
                     "ending_warn_p", "token_warn_q", "generalisation_cover", "injection_reproduces",
                     "position_share", "separating_share"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.injection not in ("candidates", "all", "none"):
            raise ValueError(f"injection must be 'candidates', 'all' or 'none', got {self.injection!r}")
        if not 0.5 < self.generalisation_auroc <= 1.0:
            raise ValueError("generalisation_auroc must be in (0.5, 1]")


@dataclass
class MeaningOptions:
    """Options of the contrast (the "statistics" flags of Chapter 2).

    ``holdout`` is None unless given, in a notebook as on the command line: "on when every group is big
    enough" (see :meth:`holdout_for`); 0 or ``no_holdout`` tests on all prompts.
    """

    agg: str = option(
        "max", "summarise each prompt by the feature's max or mean activation over its tokens, BOS excluded "
        "(default: %(default)s)", choices=("max", "mean"))
    alpha: float = option(0.05, "false discovery rate for q-values (default: %(default)s)", type=fraction)
    holdout: float | None = option(
        None, f"share of each group held out to re-test findings (default: {AUTO_HOLDOUT:g} when every group has at "
        f"least {AUTO_HOLDOUT_MIN} prompts, else off)", type=fraction, metavar="FRACTION")
    no_holdout: bool = option(False, "test on all prompts, without replication")
    seed: int = option(0, "seed of the discovery/held-out split (default: %(default)s)", type=int)
    always_on: float = option(
        0.9, "a feature firing in at least this share of the prompts of every group is 'always on' "
        "(default: %(default)s)", type=fraction, metavar="FRACTION")
    top_k: int = option(10, "features per group in tables and figures (default: %(default)s)", type=positive_int)
    # Line i of every group belongs with line i of the baseline (same frame, one word changed): the
    # test is then the Wilcoxon signed-rank test on the pairs, and one discovery/held-out split is
    # shared by all groups so that pairs stay together.
    paired: bool = option(
        False, "line i of every group file belongs with line i of the baseline file (written line-matched, "
        "as the shipped prompts are): test with the Wilcoxon signed-rank test on the pairs and list the "
        "tokens that differ within each pair; every file must have as many prompts as the baseline")
    confounds: ConfoundSettings = field(default_factory=ConfoundSettings)

    def __post_init__(self) -> None:
        if self.agg not in ("max", "mean"):
            raise UserError(f"agg must be 'max' or 'mean', got {self.agg!r}")
        if self.holdout is not None and not 0.0 <= self.holdout < 1.0:
            raise UserError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.holdout and self.no_holdout:
            raise UserError("--holdout and --no-holdout contradict each other; pick one")

    @property
    def holdout_given(self) -> bool:
        """A held-out share was asked for explicitly (then every group must be big enough for both splits)."""
        return bool(self.holdout) and not self.no_holdout

    def holdout_for(self, sizes: Mapping[str, int]) -> float:
        """The held-out share for groups of these sizes: ``holdout`` when given, none with ``no_holdout``,
        else :data:`AUTO_HOLDOUT` when every group has at least :data:`AUTO_HOLDOUT_MIN` prompts."""
        if self.no_holdout:
            return 0.0
        if self.holdout is not None:
            return self.holdout
        return AUTO_HOLDOUT if min(sizes.values()) >= AUTO_HOLDOUT_MIN else 0.0
