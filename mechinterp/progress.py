"""Progress bars for a person watching a terminal; logs, pipes and CI stay clean."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, quiet: bool, unit: str = "it"):
    """A tqdm bar on stderr, shown only on a terminal and not with ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                mininterval=0.5)
