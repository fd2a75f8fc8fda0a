"""Refresh every printed example in README.md and docs/*.md from fresh runs of the demo commands.

Why it exists: a README that shows yesterday's numbers teaches the wrong thing. Every terminal excerpt
in the documentation sits in a marked region::

    <!-- example: chapter1 -->
    ```text
    ... generated, do not edit by hand ...
    ```
    <!-- /example -->

and this tool rewrites each region from the output of the command it names (:data:`EXAMPLES`): the
chapters' ``--demo`` commands as the README's tour gives them, Chapter 5's ``--synthetic`` mode, and
each script's ``--help`` (the option reference in docs/options.md).

How it runs them: in a fresh temporary folder, with its own project cache (``MECHINTERP_CACHE=.cache``,
so the demo world is built there once and every cache starts empty) and ``--out Images``, offline
(``HF_HUB_OFFLINE=1``), 100 columns wide. Paths therefore print as ``Images/...`` and
``.cache/demo/...``, as in a checkout. What legitimately changes from run to run is masked as
``tools/compare_demo_outputs.py`` does: durations (``2.3s`` -> ``<t>``), Chapter 5's random checkpoint
folder (``checkpoints/ID``) and its training seconds.

Run (about four minutes on 2 CPU cores, Chapter 5's two trainings take two of them):
    python tools/update_readme_examples.py             # rewrite README.md and docs/*.md
    python tools/update_readme_examples.py --check     # exit 1 and print a diff if anything is stale
    python tools/update_readme_examples.py --fast      # skip Chapter 5's trainings (their regions stay)
    python tools/update_readme_examples.py --runs 2 2p # only the regions of these runs
    python tools/update_readme_examples.py --pictures  # also refresh the tour's pictures in docs/images/

``tests/test_readme.py`` runs the same commands in-process and fails when a region differs.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUT = "Images"  # every run writes here, relative to its working folder
COLUMNS = "100"  # argparse wraps --help to the terminal width; the scripts' own output is 100 wide

# The commands, by key, as the README shows them (this tool adds --out).
RUNS: dict[str, list[str]] = {
    "1": ["MechInterpInitialInvestigation.py", "--demo"],
    "2": ["MechInterpFeatureMeaning.py", "--demo"],
    "2p": ["MechInterpFeatureMeaning.py", "--demo", "--paired"],
    "3": ["MechInterpFeatureInspect.py", "--demo"],
    "3l": ["MechInterpFeatureInspect.py", "--demo", "--feature", "501", "--corpus", "demo_corpus.txt",
           "--label", "joy: happy, glad, thrilled, cheerful"],
    "4": ["MechInterpSteering.py", "--demo"],
    "6": ["MechInterpFeatureToWeights.py", "--demo"],
    "5": ["MechInterpTrainSAE.py", "--demo"],
    "5s": ["MechInterpTrainSAE.py", "--synthetic"],
}
SCRIPTS = (
    "MechInterpInitialInvestigation.py",
    "MechInterpFeatureMeaning.py",
    "MechInterpFeatureInspect.py",
    "MechInterpSteering.py",
    "MechInterpTrainSAE.py",
    "MechInterpFeatureToWeights.py",
)
RUNS.update({f"help:{script}": [script, "--help"] for script in SCRIPTS})
SLOW_RUNS = ("5", "5s")  # Chapter 5 trains SAEs: about a minute each on 2 CPU cores
# Every run writes to one Images/ folder, and the tour's pictures are taken from it at the end: the
# paired run goes first, so that MI4_happy.png is the one of the plain run the README describes.
ORDER = ("1", "2p", "2", "3l", "3", "4", "6", "5", "5s", *(f"help:{s}" for s in SCRIPTS))

# The README's commands that make a file before a run: the demo corpus, exactly as the README makes it.
DEMO_CORPUS_COMMAND = ("from mechinterp.core.toyworld import demo_corpus; s = demo_corpus(20000, seed=7); "
                       "print(*(' '.join(s[i:i + 10]) for i in range(0, len(s), 10)), sep='\\n')")
PREPARE = {"3l": "demo_corpus.txt"}

DURATION = re.compile(r"\d+(\.\d+)?\s?(s|ms|min)\b")
CHECKPOINT_ID = re.compile(r"checkpoints/[0-9a-f]{8}")  # SAELens: checkpoints/<uuid4()[:8]>/
TRAIN_SECONDS_CELL = re.compile(r"^((standard|topk)\s.*\s)\d+\.\d$", re.M)  # --synthetic's "train s" column
ELIDED = "..."


@dataclass(frozen=True)
class Span:
    """Consecutive lines of a command's output.

    Attributes:
        start: a regular expression; the span begins at the first line (after the previous span) it matches.
        stop: a regular expression; the span ends with the first line from ``start`` on that matches it.
        lines: without ``stop``, how many lines the span has.
        wrapped: also take the lines that continue the last one (a wrapped paragraph: lines indented
            deeper than it, all by the same amount).
    """

    start: str
    stop: str | None = None
    lines: int = 1
    wrapped: bool = False


@dataclass(frozen=True)
class Excerpt:
    """What a marked region shows: some spans of one run's output (``...`` between spans that are apart)."""

    run: str
    spans: tuple[Span, ...] = ()  # empty: the whole output
    report: bool = False  # from the run's full report (OUT/<script>_report.txt), not from its terminal summary

    @property
    def source(self) -> str:
        """The key of the text it is cut from in :func:`collect`'s outputs."""
        return f"{self.run}:report" if self.report else self.run

    def select(self, output: str) -> str:
        lines = output.rstrip("\n").split("\n")
        if not self.spans:
            return "\n".join(lines).strip("\n")
        picked: list[str] = []
        pos, prev_end = 0, None
        for span in self.spans:
            start = _find(lines, span.start, pos, self.run)
            end = _find(lines, span.stop, start, self.run) + 1 if span.stop else start + span.lines
            if span.wrapped and end < len(lines) and _indent(lines[end]) > _indent(lines[end - 1]):
                indent = _indent(lines[end])  # a wrapped paragraph's continuation lines share one indent
                while end < len(lines) and lines[end].strip() and _indent(lines[end]) == indent:
                    end += 1
            if prev_end is not None and start > prev_end:
                picked.append(ELIDED)
            picked.extend(lines[start:end])
            pos = prev_end = end
        return "\n".join(picked).rstrip("\n ")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _find(lines: list[str], pattern: str, pos: int, run: str) -> int:
    for i in range(pos, len(lines)):
        if re.search(pattern, lines[i]):
            return i
    raise LookupError(f"no line matching {pattern!r} from line {pos + 1} on in the output of {' '.join(RUNS[run])}")


# Every marked region, by name. Keep excerpts short: they are there to be read.
EXAMPLES: dict[str, Excerpt] = {
    "chapter1": Excerpt("1", (
        Span(r"^Text \(", wrapped=True),
        Span(r" features fire on at least one token", lines=2),
        Span(r"^rank\s+feature", lines=7),
        Span(r"^density = ", wrapped=True),
    )),
    "chapter2-design": Excerpt("2", (Span(r"^Design checks: what else differs", stop=r"^  happy: "),)),
    "chapter2-happy": Excerpt("2", (Span(r"^=== happy vs baseline", lines=5),)),
    # Not the "paired lines: happy lines add ..." summary: the order of its tied counts changes from run
    # to run (it follows Python's string hashing), so it cannot be compared with a fresh run.
    "paired-design": Excerpt("2p", (
        Span(r"^happy vs baseline: your prompt sets differ"),
        Span(r"^    pair 1: ", lines=3),
    ), report=True),
    "chapter2-family": Excerpt("2", (
        Span(r"^=== calm vs baseline"),
        Span(r"^rank  feature .* in calm", lines=4),
        Span(r"^  #\d+ \+ #\d+ concept \(split\)", wrapped=True),
    ), report=True),
    "chapter2-topic": Excerpt("2", (
        Span(r"^=== happy vs baseline"),
        Span(r"^  #\d+ on ' elated'", stop=r"^warning: ", wrapped=True),
    )),
    "verdicts-design": Excerpt("2", (Span(r"^angry vs baseline: your prompt sets differ", stop=r"^$"),), report=True),
    "verdicts-why": Excerpt("2", (
        Span(r"^=== happy vs baseline"),
        Span(r"^Verdicts of the \d+ significant", stop=r"^$"),
    ), report=True),
    "chapter3": Excerpt("3", (
        Span(r"^=== Feature #501"),
        Span(r"^Density ", wrapped=True),
        Span(r"^Top 3 of your texts", lines=5),
        Span(r"^Writes \(", wrapped=True),
    )),
    "chapter3-label": Excerpt("3l", (Span(r"^Label 'joy", stop=r"^  figure: "),)),
    "chapter4": Excerpt("4", (
        Span(r"^=== Feature #501", lines=2),
        Span(r"^Ablation on 'happy'", wrapped=True),
        Span(r"^Controls: ", wrapped=True),
        Span(r"^mean per token", lines=5),
    ), report=True),
    "chapter4-where": Excerpt("4", (Span(r"^Where it matters", wrapped=True), Span(r"^positions ", lines=5)), report=True),
    "chapter4-steering": Excerpt("4", (
        Span(r"^Steering 'baseline' prompts: add coeff × [\d.]+ × W_dec\[501\]", wrapped=True),
        Span(r"^coeff ", lines=6),
        Span(r"^! KL above", wrapped=True),
    ), report=True),
    "chapter4-continuations": Excerpt("4", (
        Span(r"^Continuations \(\d+ new tokens\), clean vs steered at coeff 2 \(\+[\d.]+ × W_dec\[501\]\)"),
        Span(r"^  prompt: ", lines=11),
    ), report=True),
    "chapter4-summary": Excerpt("4", (Span(r"^feature  ablated on", lines=4),)),
    "chapter5": Excerpt("5", (
        Span(r"^metric ", stop=r"^loss recovered"),
        Span(r"^Ground truth of the toy world", lines=5),
    )),
    "chapter5-synthetic": Excerpt("5s", (Span(r"^architecture ", lines=5), Span(r"^Best: ", wrapped=True))),
    "chapter6": Excerpt("6", (
        Span(r"^1\. Direct attribution", wrapped=True),
        Span(r"^   Check: ", wrapped=True),
        Span(r"^   component ", lines=5),
    ), report=True),
    "chapter6-sources": Excerpt("6", (Span(r"^2\. From which tokens", lines=3),), report=True),
    "chapter6-weights": Excerpt("6", (
        Span(r"^3\. Weights alone"),
        Span(r"^   Heads whose OV circuit", lines=3),
        Span(r"^   Tokens whose embedding", lines=3),
    ), report=True),
    "chapter6-causal": Excerpt("6", (
        Span(r"^4\. Causal check", wrapped=True),
        Span(r"^   component ", lines=3),
        Span(r"^   measured drop within", wrapped=True),
    ), report=True),
    "chapter6-summary": Excerpt("6", (Span(r"^feature  firing tokens", lines=4),)),
}
EXAMPLES.update({f"help-{Path(s).stem}": Excerpt(f"help:{s}") for s in SCRIPTS})

# A region may be indented (inside a list item): its generated lines get the same indentation.
REGION = re.compile(r"(?P<head>^(?P<indent>[ ]*)<!-- example: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)"
                    r"(?P<tail>^(?P=indent)<!-- /example -->)", re.S | re.M)


def mask(stdout: str) -> str:
    """The output with what changes from run to run masked (durations, checkpoint ids, training seconds)."""
    stdout = CHECKPOINT_ID.sub("checkpoints/ID", stdout)
    stdout = TRAIN_SECONDS_CELL.sub(r"\1<t>", stdout)
    return DURATION.sub("<t>", stdout)


def region_names(text: str) -> list[str]:
    names = [m.group("name") for m in REGION.finditer(text)]
    opened = re.findall(r"<!-- example: ([\w.-]+) -->", text)
    if opened != names:
        unclosed = [n for n in opened if n not in names]
        raise ValueError(f"example region(s) without a matching '<!-- /example -->': {unclosed or opened}")
    return names


def runs_needed(texts: Iterable[str]) -> list[str]:
    """The runs that the regions in ``texts`` need, in :data:`ORDER`."""
    names = {name for text in texts for name in region_names(text)}
    unknown = names - set(EXAMPLES)
    if unknown:
        raise KeyError(f"unknown example region(s) {sorted(unknown)}; known: {sorted(EXAMPLES)}")
    needed = {EXAMPLES[name].run for name in names}
    return [key for key in ORDER if key in needed]


def render(text: str, outputs: dict[str, str]) -> str:
    """``text`` with every region whose run is in ``outputs`` (masked stdout by run key) regenerated."""

    def replace(match: re.Match) -> str:
        excerpt = EXAMPLES[match.group("name")]
        if excerpt.source not in outputs:
            return match.group(0)
        indent = match.group("indent")
        lines = ["```text", *excerpt.select(outputs[excerpt.source]).split("\n"), "```"]
        body = "".join(f"{indent}{line}".rstrip() + "\n" for line in lines)
        return f"{match.group('head')}{body}{match.group('tail')}"

    return REGION.sub(replace, text)


Runner = Callable[[list[str]], str]  # argv (script and flags) -> stdout; runs in the shared work folder


def subprocess_runner(work: Path) -> Runner:
    """Run each command as a user would, in ``work``, with the environment described in the module doc."""
    env = {**os.environ, "MECHINTERP_CACHE": ".cache", "HF_HUB_OFFLINE": "1", "COLUMNS": COLUMNS,
           "PYTHONIOENCODING": "utf-8"}

    def run(argv: list[str]) -> str:
        script, *flags = argv
        result = subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=work, env=env,
                                capture_output=True, text=True, encoding="utf-8", timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return result.stdout

    return run


def collect(runner: Runner, keys: Iterable[str], log: Callable[[str], None] = lambda _m: None,
            work: Path = Path(".")) -> dict[str, str]:
    """Masked stdout of each run in ``keys`` (``--out Images`` added to every command but ``--help``), and
    as ``"<key>:report"`` the full report the run saved (``work``: the folder the runner runs in)."""
    outputs = {}
    for key in keys:
        if key in PREPARE and not (work / PREPARE[key]).is_file():
            write_demo_corpus(work / PREPARE[key])
        argv = RUNS[key] + ([] if "--help" in RUNS[key] else ["--out", OUT])
        log(f"running python {' '.join(argv)} ...")
        outputs[key] = mask(runner(argv))
        report = work / OUT / f"{Path(argv[0]).stem}_report.txt"
        if "--help" not in argv and report.is_file():  # read now: the next run of the script replaces it
            outputs[f"{key}:report"] = mask(report.read_text(encoding="utf-8"))
            report.unlink()
    return outputs


def write_demo_corpus(path: Path) -> None:
    """The demo corpus, by the README's own command (in a subprocess, as a reader runs it)."""
    text = subprocess.run([sys.executable, "-c", DEMO_CORPUS_COMMAND], cwd=ROOT, capture_output=True, text=True,
                          encoding="utf-8", check=True).stdout
    path.write_text(text, encoding="utf-8")


# The tour's pictures: docs/images/<name> from the demo's Images/<source>, downscaled.
PICTURES = {
    "chapter1.png": "MI1.png",
    "chapter2.png": "MI4_happy.png",
    "chapter3.png": "MI5_501.png",
    "chapter4.png": "MI6_501.png",
    "chapter5.png": "MI7.png",
    "chapter6.png": "MI9_501.png",
}
PICTURE_WIDTH = {"chapter5.png": 1200, "chapter6.png": 1400}  # pixels; 900 for the others (wide figures get more)
PICTURE_MAX_BYTES = 150_000


def write_pictures(images: Path, target: Path) -> list[Path]:
    """Downscale the demo's figures into ``target`` (palette PNGs, each at most :data:`PICTURE_MAX_BYTES`)."""
    from PIL import Image

    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in PICTURES.items():
        if not (images / source).is_file():  # --fast skips Chapter 5, whose picture then stays as it is
            continue
        with Image.open(images / source) as img:
            img = img.convert("RGB")
            width = min(PICTURE_WIDTH.get(name, 900), img.width)
            small = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        small = small.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE)
        path = target / name
        small.save(path, optimize=True)
        if path.stat().st_size > PICTURE_MAX_BYTES:
            raise SystemExit(f"{path} is {path.stat().st_size:,} bytes, more than {PICTURE_MAX_BYTES:,}")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 and print a diff if stale")
    parser.add_argument("--fast", action="store_true",
                        help="skip Chapter 5's trainings (about two minutes); their regions are left as they are")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), metavar="KEY",
                        help="only these runs (and their regions), e.g. --runs 2 2p; keys: " + ", ".join(RUNS))
    parser.add_argument("--pictures", action="store_true",
                        help=f"also write the tour's pictures into docs/images/ (needs the runs {sorted(set(PICTURES))})")
    args = parser.parse_args(argv)
    texts = {path: path.read_text(encoding="utf-8") for path in DOCS}
    keys = [k for k in runs_needed(texts.values()) if not (args.fast and k in SLOW_RUNS)
            and (args.runs is None or k in args.runs)]
    if args.pictures:
        keys = [k for k in ORDER if k in {*keys, "1", "2", "3", "4", "6"} or (k == "5" and not args.fast)]
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as tmp:
        work = Path(tmp)
        outputs = collect(subprocess_runner(work), keys, log=lambda m: print(m, file=sys.stderr), work=work)
        if args.pictures:
            for path in write_pictures(work / OUT, ROOT / "docs" / "images"):
                print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")
    stale = 0
    for path, text in texts.items():
        new = render(text, outputs)
        if new == text:
            continue
        stale += 1
        rel = str(path.relative_to(ROOT))
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), rel, rel + " (fresh)"))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"updated {rel}")
    if args.check:
        print(f"{stale} file(s) with stale examples" if stale else "every example is up to date")
        return 1 if stale else 0
    if not stale:
        print("every example was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
