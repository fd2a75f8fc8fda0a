"""A corpus to mine, read as a stream and cut into windows of the SAE's training context.

Why it exists: a feature's real top examples come from millions of tokens, more than fit in memory as
text or as activations, so the mining pass (:mod:`mechinterp.cards.mining`) reads its corpus one
document at a time and must be able to restart in the middle of it. This module is that reading:

* **Documents, streamed.** A local text file, one document per line, read exactly as Chapter 3's
  prompt files are (``mechinterp.core.prompts.read_prompt_file``: each line stripped, blank lines and
  lines starting with ``#`` skipped, UTF-8 with an optional BOM), but line by line instead of all at
  once; or a Hugging Face ``datasets`` dataset streamed record by record (``streaming=True``). Each
  document carries where to seek to reach it again, so an interrupted pass continues from there.
* **Windows of the SAE's training context.** Each document's tokens are cut into consecutive windows of
  ``window - 1`` tokens, and the BOS token is put in front of each when the SAE was trained with it
  (``window`` tokens and no BOS when it was not), so the SAE sees sequences like its training data
  (``gpt2-small-res-jb``: 128 tokens, BOS first). A window never mixes two documents, so an example's
  context is one document's text. ``<|endoftext|>`` written inside a document is tokenized as text,
  not as the special token.

:class:`CorpusOptions` holds Chapter 3's "corpus mining" flags: which corpus, and how much of it to mine.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mechinterp.core.errors import EnvironmentProblem, UserError
from mechinterp.core.loading import Loaded, go_offline_if_hub_unreachable
from mechinterp.core.options import option, positive_int

UTF8_BOM = b"\xef\xbb\xbf"
# Corpus tokens mined unless --max-tokens says otherwise: GPT-2 small encodes ~1,000 tokens/s on a
# 2-core CPU, so about two minutes there (seconds on a GPU), and enough for a feature that fires on
# 0.1% of tokens to show ~100 firing tokens.
DEFAULT_MAX_TOKENS = 100_000
# --max-tokens all: the whole corpus (argparse's own None means "not given": the default applies).
ALL_TOKENS = 0
DEFAULT_SPLIT, DEFAULT_TEXT_COLUMN = "train", "text"
# A bfloat16 (or float16) pass keeps this many times a card's top windows per feature as candidates for
# the float32 re-score: rounding can push a true top window just below the last place. On the demo world
# (k = 5) 2x leaves 50 of 512 features' top windows different from float32's, against 120 at 1x and 17
# at 4x (bench/README.md, "bfloat16, and the float32 re-score of the top windows").
DEFAULT_CANDIDATES_FACTOR = 2


# --- corpora --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
        index: 0-based, in corpus order (a file's blank and ``#`` lines are not documents; a dataset's
            records are numbered as they come, empty ones included).
        text: the document's text.
        line: 1-based line of a text file where it is (0 for a dataset record).
        seek: where to start reading to reach this document again (a file's byte offset of its line;
            0 for a dataset), with ``seek_line`` and ``seek_first`` (the line number there and the
            index of the first document read from there).
    """

    index: int
    text: str
    line: int = 0
    seek: int = 0
    seek_line: int = 1
    seek_first: int = 0
    end: int = 0  # bytes of the file read once this document is read (0 for a dataset)


@dataclass(frozen=True)
class CorpusPosition:
    """Where a pass stands: the next document, how many of its tokens are done, and where to seek to it."""

    doc: int = 0
    token: int = 0
    seek: int = 0
    seek_line: int = 1
    seek_first: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Corpus(Protocol):
    """A source of documents that a pass can restart from a :class:`CorpusPosition`."""

    def identity(self) -> dict[str, str]:
        """What determines the documents, for the checkpoint's key."""
        ...

    def describe(self) -> str:
        """One line naming the corpus, for logs and outputs."""
        ...

    def size_bytes(self) -> int | None:
        """Its size, when known without reading it (for the progress estimate)."""
        ...

    def documents(self, start: CorpusPosition) -> Iterator[Document]:
        """Documents from index ``start.doc`` on, in order."""
        ...


@dataclass(frozen=True)
class TextFileCorpus:
    """A UTF-8 text file with one document per line, read line by line (never all at once).

    The rules are Chapter 3's ``--corpus`` rules (``mechinterp.core.prompts.read_prompt_file``): each line is
    stripped, blank lines and lines starting with ``#`` are skipped, a UTF-8 BOM at the start is
    ignored, and a NUL byte or invalid UTF-8 is an error naming the line.
    """

    path: Path

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise UserError(f"corpus file {self.path} does not exist")

    def identity(self) -> dict[str, str]:
        stat = Path(self.path).stat()
        return {"corpus": f"file:{Path(self.path).resolve()}", "size": str(stat.st_size),
                "mtime_ns": str(stat.st_mtime_ns)}

    def describe(self) -> str:
        return str(self.path)

    def size_bytes(self) -> int | None:
        return Path(self.path).stat().st_size

    def documents(self, start: CorpusPosition = CorpusPosition()) -> Iterator[Document]:
        path = Path(self.path)
        with open(path, "rb") as f:
            f.seek(start.seek)
            offset, line_no, index = start.seek, start.seek_line, start.seek_first
            for raw in f:  # splits on b"\n" only; a "\n" byte never occurs inside a UTF-8 character
                begin, this_line, first = offset, line_no, index
                offset += len(raw)
                line_no += 1
                if begin == 0 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                if b"\x00" in raw:
                    raise UserError(
                        f"{path} contains a NUL byte on line {this_line}; it looks like a binary file, not text"
                    )
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(
                        f"{path} is not UTF-8 text (bad byte on line {this_line}); save it as UTF-8"
                    ) from None
                # splitlines, as read_prompt_file does, so the rarer line breaks (\r, \u2028) split too.
                for piece in text.splitlines():
                    piece = piece.strip()
                    if not piece or piece.startswith("#"):
                        continue
                    if index >= start.doc:
                        yield Document(index, piece, this_line, begin, this_line, first, offset)
                    index += 1


@dataclass(frozen=True)
class HFDatasetCorpus:
    """A Hugging Face ``datasets`` dataset, streamed (``load_dataset(..., streaming=True)``): nothing is
    downloaded in advance, and records are read as the pass needs them.

    Attributes:
        name: a Hub dataset (e.g. ``Skylion007/openwebtext``), a local dataset folder, or a packaged
            builder such as ``text`` or ``json`` together with ``data_files``.
        split: the split to stream.
        column: the column holding each record's text.
        config: the dataset's configuration name, if it has several.
        data_files: files for a packaged builder.
    """

    name: str
    split: str = "train"
    column: str = "text"
    config: str | None = None
    data_files: str | None = None

    def identity(self) -> dict[str, str]:
        return {"corpus": f"hf:{self.name}", "config": str(self.config), "split": self.split,
                "column": self.column, "data_files": str(self.data_files)}

    def describe(self) -> str:
        return f"Hugging Face dataset {self.name} ({self.split} split, streamed)"

    def size_bytes(self) -> int | None:
        return None

    def needs_hub(self) -> bool:
        """False for a local dataset folder or a packaged builder (text, json, ...), which work offline."""
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

        return not (Path(self.name).exists() or self.name in _PACKAGED_DATASETS_MODULES)

    def ensure_reachable(self) -> None:
        """Fail at once, in one line, when the dataset is on the Hub and the Hub cannot be reached.

        Meant to run before anything expensive (loading the model). One quick probe decides: without it
        an unreachable Hub costs ~25 s of retries before the same failure. Nothing is downloaded here.

        Raises:
            EnvironmentProblem: exit status 1 (the machine lacks the network, as for a model download),
                whether ``HF_HUB_OFFLINE`` is set or the probe fails; the message names the option that
                works without it (``--corpus FILE``). After a failed probe huggingface_hub stays offline
                for the rest of the process.
        """
        if not self.needs_hub():
            return
        import datasets
        from huggingface_hub import constants as hub

        if hub.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
            why = "this run is offline (HF_HUB_OFFLINE is set)"
        else:
            unreachable: list[str] = []
            go_offline_if_hub_unreachable(unreachable.append)  # the error below says it: no second line
            if not unreachable:
                return
            why = f"the Hub ({hub.ENDPOINT}) cannot be reached from here"
        raise EnvironmentProblem(
            f"the dataset {self.name} is streamed from the Hugging Face Hub, but {why}; connect to the "
            "internet, or mine a local text file with --corpus FILE"
        )

    def open(self) -> Any:
        """The streaming dataset; fails at once, in one line, when it cannot be reached."""
        import datasets

        self.ensure_reachable()
        try:
            return datasets.load_dataset(
                self.name, self.config, split=self.split, streaming=True, data_files=self.data_files
            )
        except Exception as err:
            raise EnvironmentProblem(
                f"could not open the dataset {self.name!r} ({_first_line(err)}); check its name, --dataset-split "
                "and the network, or mine a local text file with --corpus FILE"
            ) from err

    def documents(self, start: CorpusPosition = CorpusPosition()) -> Iterator[Document]:
        ds = self.open()
        if start.doc:
            ds = ds.skip(start.doc)  # streamed again, but not encoded again
        records = iter(ds)
        index = start.doc
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as err:
                raise EnvironmentProblem(
                    f"streaming {self.name} failed at record {index} ({_first_line(err)}); rerun the same "
                    "command to continue from the last checkpoint"
                ) from err
            if self.column not in record:
                raise UserError(
                    f"the dataset {self.name} has no column {self.column!r}; its columns are "
                    f"{', '.join(map(str, record))}"
                )
            text = record[self.column]
            yield Document(index, text if isinstance(text, str) else "")
            index += 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else "") or type(err).__name__


# --- windows --------------------------------------------------------------------------------------------


@dataclass
class MinedWindow:
    """A window of one document: the tokens the SAE saw (BOS not included here).

    Attributes:
        window_id: 0-based, in corpus order (the tie-breaker: equal values rank the earlier window first).
        doc: the document's index; ``line``: its line in a text file (0 for a dataset).
        start: index of ``tokens[0]`` among the document's tokens.
        tokens: int32 ``[n]`` token ids, ``n <= window - 1`` with BOS (``window`` without).
    """

    window_id: int
    doc: int
    line: int
    start: int
    tokens: np.ndarray


def encode_document(tokenizer: Any, text: str) -> list[int]:
    """A document's token ids, without BOS; special-token text such as ``<|endoftext|>`` stays text."""
    try:
        # verbose=False: a document longer than the model's context is expected here (it is windowed).
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True, verbose=False)
    except TypeError:  # a tokenizer without these options
        return tokenizer.encode(text, add_special_tokens=False)


def iter_windows(
    corpus: Corpus, tokenizer: Any, text_len: int, start: CorpusPosition = CorpusPosition(),
    max_tokens: int | None = None, first_id: int = 0,
) -> Iterator[tuple[MinedWindow, CorpusPosition, int]]:
    """Cut the corpus into windows of at most ``text_len`` tokens, document by document.

    Yields:
        ``(window, position after it, bytes of the corpus read)``. The windows of a document start at
        token 0, ``text_len``, ``2 * text_len``, ...; the last one may be shorter. With ``max_tokens``,
        the stream stops after that many tokens (the last window cut short).
    """
    left = max_tokens
    window_id = first_id
    for doc in corpus.documents(start):
        ids = encode_document(tokenizer, doc.text)
        first = start.token if doc.index == start.doc else 0
        for begin in range(first, len(ids), text_len):
            if left is not None and left <= 0:
                return
            chunk = ids[begin : begin + text_len]
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            stop = begin + len(chunk)
            if stop < len(ids):
                after = CorpusPosition(doc.index, stop, doc.seek, doc.seek_line, doc.seek_first)
            else:
                after = CorpusPosition(doc.index + 1, 0, doc.seek, doc.seek_line, doc.seek_first)
            yield MinedWindow(window_id, doc.index, doc.line, begin, np.asarray(chunk, dtype=np.int32)), after, doc.end
            window_id += 1



def resolve_window(loaded: Loaded, requested: int | None = None) -> tuple[int, str]:
    """Tokens per window (BOS included), and whose context that is, in words.

    An SAE is trained on sequences of a fixed length; past it its features are off-distribution, even
    where the model accepts more (GPT-2: 1,024). So the SAE's own context is the default.
    """
    n_ctx = int(loaded.model.cfg.n_ctx)
    if requested is not None:
        if requested > n_ctx:
            raise UserError(f"a window of {requested} tokens is longer than the model's context of {n_ctx}")
        return int(requested), f"{requested} tokens (as requested)"
    sae_ctx = getattr(getattr(loaded.sae.sae.cfg, "metadata", None), "context_size", None)
    if sae_ctx:
        size = min(int(sae_ctx), n_ctx)
        return size, f"{size} tokens, the context the SAE {loaded.sae.label} was trained on"
    return n_ctx, f"{n_ctx} tokens, the model's context (the SAE does not record its training context)"



# --- the "corpus mining" options ------------------------------------------------------------------------


def token_count(text: str) -> int:
    """argparse type for --max-tokens: a whole number (100000, 100_000, 100k, 1M), or "all" (ALL_TOKENS)."""
    word = text.strip().lower().replace(",", "").replace("_", "")
    if word == "all":
        return ALL_TOKENS
    scale = {"k": 1_000, "m": 1_000_000}.get(word[-1:], 1)
    try:
        value = int(float(word[:-1]) * scale) if scale > 1 else int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens (e.g. 100000, 100k, 1M) or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 token, got {text}")
    return value


# Flags that only mean something for a Hugging Face dataset, and every flag that needs a corpus.
DATASET_FLAGS = ("dataset_split", "text_column", "dataset_config")
MINING_FLAGS = ("all_features", "fresh", "max_tokens", "candidates_factor", *DATASET_FLAGS)


@dataclass
class CorpusOptions:
    """The corpus to mine and how much of it (Chapter 3's "corpus mining" flags); no corpus by default.

    ``corpus`` and ``dataset`` exclude each other (the command line puts them in one mutually exclusive
    group). The other fields need one of them, and the dataset's fields need ``dataset``.
    """

    corpus: Path | None = option(
        None, "a UTF-8 text file, one document per line ('#' lines skipped): each card adds the feature's density, "
        "top windows, lower-level windows and histogram over it", type=Path, metavar="FILE")
    dataset: str | None = option(
        None, "a Hugging Face dataset streamed from the Hub instead (e.g. Skylion007/openwebtext; needs the "
        "network), mined like --corpus", metavar="NAME")
    dataset_split: str | None = option(
        None, f"with --dataset: the split to stream (default: {DEFAULT_SPLIT})", metavar="SPLIT")
    text_column: str | None = option(
        None, f"with --dataset: the column holding each record's text (default: {DEFAULT_TEXT_COLUMN})", metavar="NAME")
    dataset_config: str | None = option(
        None, "with --dataset: its configuration, for datasets that have several (e.g. wikitext-103-raw-v1 for "
        "Salesforce/wikitext)", metavar="NAME")
    max_tokens: int | None = option(
        None, "corpus tokens to mine, BOS not counted: a number (100000, 100k, 1M) or 'all' "
        f"(default: {DEFAULT_MAX_TOKENS:,}, about two minutes of GPT-2 small on a CPU)", type=token_count, metavar="N")
    all_features: bool = option(
        False, "track every feature of the SAE in the pass and write corpus_features.csv (each feature's density "
        "and top example) and corpus_histograms.csv; cards are still made for the features chosen above, if any")
    fresh: bool = option(False, "ignore the saved pass (in the project cache, .cache/mining/) and mine again")
    candidates_factor: int | None = option(
        None, "with --dtype bfloat16 or float16: the pass keeps N times a card's top windows (--top-prompts, at "
        "least 10) per feature as candidates, which a float32 copy of the model and SAE encodes again to pick "
        "and show the top windows with float32 activations; a larger N finds more of float32's top windows "
        "(fewer flagged), at N times the re-score's cost "
        f"(default: {DEFAULT_CANDIDATES_FACTOR})", type=positive_int, metavar="N")

    def __post_init__(self) -> None:
        if self.corpus is not None and self.dataset is not None:
            raise UserError("give one corpus: --corpus FILE or --dataset NAME, not both")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise UserError(f"--max-tokens must be at least 1 (or 'all'), got {self.max_tokens}")
        given = [name for name in MINING_FLAGS
                 if (self.max_tokens is not None if name == "max_tokens" else getattr(self, name))]
        if self.corpus is None and self.dataset is None and given:
            raise UserError(f"{_flag(given[0])} is about corpus mining: add --corpus FILE (one document per line) "
                            "or --dataset NAME")
        dataset_only = [name for name in DATASET_FLAGS if getattr(self, name)]
        if self.corpus is not None and dataset_only:
            raise UserError(f"{_flag(dataset_only[0])} applies to --dataset, not to --corpus FILE")

    @property
    def rescore_factor(self) -> int:
        """Candidate windows per top window kept by a reduced-precision pass for the float32 re-score."""
        return self.candidates_factor or DEFAULT_CANDIDATES_FACTOR

    def check_dtype(self, dtype: str) -> None:
        """Refuse ``--candidates-factor`` with a float32 pass: its top windows are float32's already."""
        if self.candidates_factor is not None and dtype == "float32":
            raise UserError("--candidates-factor applies to a pass in --dtype bfloat16 or float16 (its top windows "
                            "are re-scored in float32); a float32 pass's top windows are exact already")

    @property
    def token_limit(self) -> int | None:
        """Corpus tokens the pass may read: ``DEFAULT_MAX_TOKENS`` unless given; None for the whole corpus."""
        if self.max_tokens is None:
            return DEFAULT_MAX_TOKENS
        return None if self.max_tokens == ALL_TOKENS else self.max_tokens

    def open(self) -> Corpus | None:
        """The corpus to mine, or None; a corpus file must exist (a dataset is reached only when mined)."""
        if self.corpus is not None:
            return TextFileCorpus(Path(self.corpus))
        if self.dataset is not None:
            return HFDatasetCorpus(self.dataset, split=self.dataset_split or DEFAULT_SPLIT,
                                   column=self.text_column or DEFAULT_TEXT_COLUMN, config=self.dataset_config)
        return None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
