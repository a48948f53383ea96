"""SIGINT and SIGTERM stop a run at its next step boundary instead of killing it mid-step.

Ctrl-C and a cluster scheduler's SIGTERM (sent some time before SIGKILL) set a flag; the loop reads it once a step,
saves what a resumed run needs and raises `Interrupted`, which the CLI prints as one line with the command that
resumes. A second Ctrl-C stops at once. Data-loader workers ignore both signals (the first SIGTERM, at least), so
they neither print their own tracebacks nor die under the main process while it finishes its step.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While active (a context manager, main thread only), SIGINT and SIGTERM only record that a stop was asked."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the step
        if self.signum is None:
            self.signum = signum

    def requested(self, device=None) -> int:
        """The signal that asked to stop, 0 if none; under torchrun the same answer on every rank."""
        if device is None:
            return self.signum or 0
        from . import dist

        return dist.max_over_ranks(self.signum or 0, device)


def _ignore_first_sigterm(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one (the loader's own shutdown) ends the worker


def quiet_worker(worker_id: int = 0) -> None:
    """`worker_init_fn` for DataLoaders: Ctrl-C and a scheduler's SIGTERM reach every process of the group; the
    main process decides when to stop, and shuts its workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_first_sigterm)
