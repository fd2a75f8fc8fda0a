"""Progress for a person watching a terminal: one logger type and progress bars; logs, pipes and CI stay clean."""

from __future__ import annotations

import sys
from collections.abc import Callable

# The one logger type of the package: a function that takes a progress message. The scripts pass one
# that prints to stderr (or nothing with --quiet); a notebook may pass print.
Log = Callable[[str], None]


def silent(_msg: str) -> None:
    """The logger that says nothing (the default everywhere)."""


def progress_bar(total: int | None, desc: str, quiet: bool, unit: str = "it", unit_scale: bool = False):
    """A tqdm bar on stderr, shown only on a terminal and not with ``quiet`` (``bar.disable`` says which)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=quiet or not sys.stderr.isatty(),
                file=sys.stderr, mininterval=0.5)
