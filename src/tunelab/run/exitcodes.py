"""The exit codes of every `tunelab` command: one scheme, so a script or CI job can tell a bad input from a bug.

    0    OK            the command did what was asked (a run promoted, a check clean, a server stopped cleanly)
    1    CHECK_FAILED  the command worked and its verdict is negative: a data check found errors, a monitor
                       alert fired, an export did not match its source
    2    USER_ERROR    the input cannot be used as given (spec, data file, run directory, model folder, path,
                       disk space, permissions, pickle weights): one line names the place and the fix
    3    NOT_PROMOTED  a run (or the best trial or rung) does not beat its untuned baseline
    70   INTERNAL      an unexpected failure inside tunelab (a bug): the traceback is printed; please report it
    130  INTERRUPTED   stopped by SIGINT (Ctrl-C); 143 for SIGTERM (128 + the signal's number, the shell's
                       convention). A training run writes a checkpoint first and `--resume` continues it exactly.

Its own module, importing nothing, so the CLI can use it without loading torch.
"""

from __future__ import annotations

import signal

OK = 0
CHECK_FAILED = 1
USER_ERROR = 2
NOT_PROMOTED = 3
INTERNAL = 70  # EX_SOFTWARE in sysexits.h


def interrupted(signum: int = signal.SIGINT) -> int:
    """The exit code of a run stopped by signal SIGNUM: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)
