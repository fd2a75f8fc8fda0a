"""Token ids as readable strings: whole characters, never '�'.

GPT-2's tokenizer works on bytes. A character outside ASCII (☕, curly quotes, many accented letters)
can be split across two or three tokens, none of which is valid UTF-8 on its own, so decoding one token
at a time shows '�'. Here consecutive tokens that only together form whole characters are grouped, and
each token of a group is labelled with the group's text and its place in it: ``☕[1/2]``, ``☕[2/2]``.
The label is honest about the split (every column of a heatmap is still one token) and readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
# A UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens are ever needed to complete one.
MAX_PIECES = 4


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One label per token id: its text, or for a character split across tokens ``text[j/n]``.

    Args:
        tokenizer: a Hugging Face tokenizer (``decode`` of a list of ids).
        ids: token ids (e.g. a text's tokens without BOS).

    Returns:
        ``len(ids)`` strings. A token whose text is complete on its own is decoded as usual.
    """
    ids = [int(t) for t in ids]
    labels: list[str] = []
    i = 0
    while i < len(ids):
        text = tokenizer.decode([ids[i]])
        if REPLACEMENT not in text:
            labels.append(text)
            i += 1
            continue
        # Extend the group until its bytes decode to whole characters (or give up after MAX_PIECES).
        end = i + 1
        while end < len(ids) and end - i < MAX_PIECES and REPLACEMENT in text:
            end += 1
            text = tokenizer.decode(ids[i:end])
        if REPLACEMENT in text:  # a genuinely broken byte sequence: keep the single token as it is
            labels.append(tokenizer.decode([ids[i]]))
            i += 1
            continue
        n = end - i
        labels += [f"{text}[{j}/{n}]" for j in range(1, n + 1)]
        i = end
    return labels


def decode_token(tokenizer: Any, token_id: int) -> str:
    """A single vocabulary entry as text; byte pieces that are not whole characters shown as ``<0xE2>``.

    Used where a token stands alone (a list of promoted tokens, a steering target), so there are no
    neighbours to complete it.
    """
    text = tokenizer.decode([int(token_id)])
    if REPLACEMENT not in text:
        return text
    raw = _token_bytes(tokenizer, int(token_id))
    return text if raw is None else _show_bytes(raw)


def _show_bytes(raw: bytes) -> str:
    """Decode what is valid UTF-8 and show each stray byte as ``<0xAB>``."""
    out, i = [], 0
    while i < len(raw):
        for size in (4, 3, 2, 1):
            chunk = raw[i:i + size]
            try:
                out.append(chunk.decode("utf-8"))
                i += len(chunk)
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
    return "".join(out)


def _token_bytes(tokenizer: Any, token_id: int) -> bytes | None:
    """The raw bytes of a byte-level BPE token (GPT-2's byte-to-unicode alphabet), or None if unknown."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return None
    decoder = _byte_decoder()
    try:
        return bytes(decoder[ch] for ch in piece)
    except KeyError:
        return None


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode alphabet back to bytes (the inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
