"""Aligned plain-text tables for the terminal (readable at 100 columns, pasteable into notes)."""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Sequence
from typing import Any

MAX_CELL = 16  # longer cells (except the last column, usually a URL) are shortened with an ellipsis


def _cell(value: Any, last: bool) -> str:
    text = str(value)
    if not last and len(text) > MAX_CELL:
        text = text[: MAX_CELL - 1] + "…"
    return text


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    n = len(header)
    cells = [[_cell(v, i == n - 1) for i, v in enumerate(row)] for row in rows]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(n)]
    numeric = [
        all(isinstance(row[i], (int, float)) or _is_number(str(row[i])) for row in rows) if rows else False
        for i in range(n)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    out = [line(list(header)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


WIDTH = 100  # terminal columns that every printed line fits in


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 feature"``, ``"2 features"``: the count and the word, agreeing."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def percent(fraction: float | None) -> str:
    """A share as the project prints densities and firing rates: ``"5.7%"``, ``"<0.0001%"`` for the floor
    that sparsity files give features never seen, ``"-"`` for none."""
    if fraction is None:
        return "-"
    return "<0.0001%" if 0 < fraction < 1e-6 else f"{100 * fraction:.3g}%"


_QUOTED = re.compile(r"'[^'\n]{0,24}'|\"[^\"\n]{0,24}\"")  # a token, not a quoted sentence


def wrapped(text: str, indent: str = "  ") -> str:
    """Prose wrapped to :data:`WIDTH` columns, continuation lines indented (what :func:`print_wrapped` prints).

    A quoted token such as ``' seated'`` is never broken across lines: its space is part of the token.
    """
    protected = _QUOTED.sub(lambda m: m.group(0).replace(" ", "\0"), text)
    return textwrap.fill(protected, WIDTH, subsequent_indent=indent, break_on_hyphens=False).replace("\0", " ")


def print_wrapped(text: str) -> None:
    """Print prose wrapped to :data:`WIDTH` columns (continuation lines indented)."""
    print(wrapped(text))


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(header, rows))


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
