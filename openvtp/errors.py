"""The exceptions the CLI turns into one line: user mistakes, and runs stopped by a signal."""
from __future__ import annotations

import signal


class OpenVTPError(Exception):
    """A user mistake (bad path, config, image or checkpoint).

    The CLI prints it as a single line and exits non-zero; library callers can catch it.
    The message says what is wrong and where (file, key, index).
    """


class MissingPartError(OpenVTPError, RuntimeError):
    """The model lacks the part a call needs (no text tower, no pixel decoder).

    Also a RuntimeError, which is what the released model raises there, so code written
    against the released API catches it unchanged.
    """
class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run at a step boundary, after it saved what a resumed run needs.

    `saved` says what was written (a checkpoint, a cache); `resume` holds the `key=value` overrides that resume
    the run when added to the same command (empty: the same command resumes by itself). The CLI prints the
    command and exits 128 + signum (130 for SIGINT, 143 for SIGTERM), as a shell does for a killed process.
    """

    def __init__(self, signum: int, saved: str, resume: tuple[str, ...] = ()):
        self.signum, self.saved, self.resume = signum, saved, tuple(resume)
        super().__init__(f"stopped by {signal.Signals(signum).name}; {saved}")
