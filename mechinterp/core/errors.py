"""User-facing errors and the one place that turns them into a clean exit.

A research tool earns trust by never answering a user's mistake with a traceback: every problem the
user can fix is raised as :class:`UserError` with a one-line message that names the problem and the
fix, and ``mechinterp.cli.run_cli`` prints it and returns the exit status (2 for usage errors).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # the shell's convention for "killed by SIGINT"


class UserError(Exception):
    """A problem the user can fix (bad input, bad option). Exit status 2 by default."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(UserError):
    """The machine lacks something (network, cache, memory, a writable folder). Exit status 1."""

    exit_code = EXIT_FAILURE


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) with something to tell the user: what was saved and how to continue.

    ``mechinterp.cli.run_cli`` prints ``interrupted: <note>`` and exits 130, as for any Ctrl-C.
    """

    def __init__(self, note: str):
        super().__init__(note)
        self.note = note
