"""Which model, SAE and hook produced a results file, so that another chapter never reads it with another SAE.

Feature ids mean nothing outside their SAE: feature #413 of one SAE and #413 of another are unrelated.
Chapter 2 stamps every row of ``feature_stats.csv`` with the model, the SAE's identity and the hook;
Chapters 3, 4 and 6 compare that stamp with the SAE they have loaded and refuse a mismatch.

An SAE's identity is its SAELens release and id, or, for a local folder (``--sae-path``), the sha256 of
its weights file: a folder can be retrained in place, and its path says nothing about its contents.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from mechinterp.core.errors import UserError

# Columns Chapter 2 adds to every row of feature_stats.csv.
PROVENANCE_COLUMNS = ("model", "sae", "hook")


def sae_identity(release: str, sae_id: str, sae_path: Path | None) -> str:
    """``release/id`` for a pretrained SAE, ``sha256:<first 16 hex digits of the weights>`` for a folder."""
    if sae_path is None:
        return f"{release}/{sae_id}"
    weights = Path(sae_path) / "sae_weights.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class Provenance:
    """The model, SAE and hook behind a set of feature ids."""

    model: str
    sae: str
    hook: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def row(self) -> list[str]:
        return [self.model, self.sae, self.hook]

    def check(self, stamped: dict[str, str], source: str) -> None:
        """Refuse ``stamped`` (a results file's model/SAE/hook) when it was made with another SAE or hook.

        Args:
            stamped: the file's values for PROVENANCE_COLUMNS.
            source: how to name the file in the message, e.g. "--from-results Images/feature_stats.csv".
        """

        problems = []
        if stamped.get("sae") and stamped["sae"] != self.sae:
            problems.append(f"SAE {stamped['sae']} (loaded: {self.sae})")
        if stamped.get("hook") and stamped["hook"] != self.hook:
            problems.append(f"hook {stamped['hook']} (loaded: {self.hook})")
        if stamped.get("model") and not same_model(stamped["model"], self.model):
            problems.append(f"model {stamped['model']} (loaded: {self.model})")
        if problems:
            raise UserError(
                f"{source} was made with {'; '.join(problems)}. Its feature ids mean other features in this SAE; "
                "run Chapter 2 with this SAE first, or load the SAE the file was made with"
            )


def same_model(a: str, b: str) -> bool:
    """Whether two TransformerLens names (or aliases, e.g. gpt2-small and gpt2) are the same model."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    def official(name: str) -> str:
        try:
            return get_official_model_name(name)
        except ValueError:  # not a TransformerLens name: compare as written
            return name

    return official(a) == official(b)
