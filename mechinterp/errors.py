"""User-facing errors and the one place that turns them into a clean exit.

A research tool earns trust by never answering a user's mistake with a traceback: every problem the
user can fix is raised as :class:`UserError` with a one-line message that names the problem and the
fix, and :func:`run_cli` prints it and returns the exit status (2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # the shell's convention for "killed by SIGINT"


class UserError(Exception):
    """A problem the user can fix (bad input, bad option). Exit status 2 by default."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(UserError):
    """The machine lacks something (network, cache, memory, a writable folder). Exit status 1."""

    exit_code = EXIT_FAILURE


def run_cli(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a script's body, turning expected failures into one-line messages and exit codes."""
    debug = bool(getattr(args, "debug", False))
    try:
        return body(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            "interrupted: stopped cleanly. Earlier results in the output folder are untouched, and the "
            "prompts already encoded are cached, so a rerun continues where this one stopped.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug, not a user mistake: say so, and how to see the details
        if debug:
            raise
        print(
            f"error: unexpected {type(err).__name__}: {err}\n"
            "This is probably a bug. Rerun with --debug to see the traceback, and please report it.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
