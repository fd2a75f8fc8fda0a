"""One position convention for every chapter's output: the index in the model's token sequence, BOS = 0.

That is the index a learner looks up with TransformerLens, ``cache["blocks.8.hook_resid_pre"][0, pos]``,
so a position printed by one chapter can be checked directly, and the same token carries the same
number in every chapter's terminal text, CSVs, cards and figures. Code that has dropped BOS may index
text tokens from 0 internally (Chapter 2's verdicts, Chapter 3's examples); it converts with
:func:`model_position` where it prints or writes, never earlier, so the two indexings never meet in
one output.
"""

from __future__ import annotations

# How outputs name the convention, once per table, legend or sentence: "position 14 (BOS = 0)".
BOS_ZERO = "BOS = 0"


def model_position(text_index: int, n_skip: int = 1) -> int:
    """The position in the model's token sequence (BOS = 0) of one of a text's own tokens.

    Args:
        text_index: the token's index among the text's tokens (0 = the first token after BOS).
        n_skip: positions in front of the text: 1 for the BOS the SAE asks for (every SAE this project
            ships, the demo's and Chapter 5's), 0 for an SAE that takes no BOS.

    Returns:
        ``text_index + n_skip``: the index into the model's sequence, so ``tokens[0]`` is at 1 after BOS.
    """
    return int(text_index) + int(n_skip)
