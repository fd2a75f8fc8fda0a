"""Progress bars for a person watching a terminal; logs, pipes and CI stay clean."""

from __future__ import annotations

import sys


def progress_bar(total: int | None, desc: str, quiet: bool, unit: str = "it", unit_scale: bool = False):
    """A tqdm bar on stderr, shown only on a terminal and not with ``quiet`` (``bar.disable`` says which)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=quiet or not sys.stderr.isatty(),
                file=sys.stderr, mininterval=0.5)
