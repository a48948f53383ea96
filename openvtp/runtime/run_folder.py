"""A run folder belongs to one live run.

`RunFolder` is what a training loop (or an extraction) holds while it writes into its output folder:

- a lock, `run.lock`, holding the pid, host, start time and command of the run. The file is also `flock`ed while
  the run lives, so the kernel releases it when the process dies, however it dies; a second run into a live
  folder stops with one line naming the holder, and a lock whose holder is gone is reported and taken over;
- the leftovers of writes a killed run never finished (temporary checkpoint folders, files) are removed;
- a run that fails before its first step leaves nothing behind that was not there before (a bad config, a
  missing data path, a model that cannot be built: `config.yaml`, `tensorboard/`, an empty folder);
- SIGINT and SIGTERM are caught (`StopSignals`): `step_done()` tells the loop, at its step boundary, to save a
  checkpoint and raise `interrupted(step)`.

Under torchrun rank 0 holds the lock and tidies the folder; every rank catches the signals, and all ranks agree
on stopping at the same step.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from openvtp.errors import Interrupted, OpenVTPError
from openvtp.runtime.files import remove_created, remove_stale_temps, writable_dir

from .checkpoint import list_checkpoints
from .interrupt import StopSignals

log = logging.getLogger("openvtp.train")
LOCK = "run.lock"


def _holder_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536).decode(errors="replace").strip()
    if not raw:
        return {}
    try:
        info = json.loads(raw)
        return info if isinstance(info, dict) else {"pid": "?"}
    except json.JSONDecodeError:
        return {"pid": "?"}


def take_lock(path: Path, what: str) -> int:
    """Open and flock `path` for this process; returns the file descriptor (released by `release_lock`)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            command = f" ({holder['command']})" if holder.get("command") else ""
            raise OpenVTPError(f"{what} {path.parent} is in use by a live run: {_holder_text(holder)}{command}; "
                               f"wait for it or stop it, or choose another {what}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and our flock: try again
            os.close(fd)
            continue
        stale = _read_holder(fd)
        if stale:
            log.warning("%s %s: taking over a stale lock (%s): that run ended without releasing it",
                        what, path.parent, _holder_text(stale))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
        return fd


def release_lock(path: Path, fd: int) -> None:
    """Remove the lock file while holding it, then let it go (a waiting run sees the file gone and retries)."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


class RunFolder:
    """Context manager a loop holds around its work in `path` (see the module docstring).

    what: the setting that names the folder in messages (`train.out_dir`, `--out`).
    main: whether this process holds the lock and tidies the folder (rank 0). device: for the ranks to agree.
    resume_setting: the run's `train.resume`; 'latest' with no checkpoint to resume is reported, not an error.
    resume: the overrides that resume this run from its newest checkpoint, for the interrupt message.
    """

    def __init__(self, path: str | Path, what: str, main: bool = True, device=None, resume_setting: str = "",
                 resume: tuple[str, ...] = ("train.resume=latest",)):
        self.path, self.what, self.main, self.device = Path(path), what, main, device
        self.resume_setting, self.resume = resume_setting, resume
        self.signals = StopSignals()
        self.worked = False
        self._on_exit: list = []
        self._fd: int | None = None
        self._created: list[Path] = []
        self._before: set[str] = set()

    def __enter__(self) -> "RunFolder":
        error = None
        if self.main:
            try:
                self._open()
            except Exception as e:  # every rank must hear of it, or the others would wait for rank 0 for ever
                error = e
        if self.device is not None:
            from . import dist

            if dist.any_rank(error is not None, self.device) and error is None:
                error = OpenVTPError(f"{self.what} {self.path}: rank 0 could not take the run folder")
        if error is not None:
            raise error
        self.signals.__enter__()
        return self

    def _open(self) -> None:
        self._created = writable_dir(self.path, self.what)
        self._before = {p.name for p in self.path.iterdir()}
        try:
            self._fd = take_lock(self.path / LOCK, self.what)
        except BaseException:
            remove_created(self._created)
            raise
        for leftover in remove_stale_temps(self.path, self.path / "checkpoints", prefixes=(".step_",)):
            log.warning("removed %s, left by a write that was killed before it finished", leftover)
        if self.resume_setting == "latest" and not list_checkpoints(self.path):
            log.warning("train.resume=latest: no checkpoint in %s yet; starting at step 0", self.path / "checkpoints")

    def on_exit(self, close) -> None:
        """Call `close()` when the run ends, however it ends: a progress bar closed before an error is printed."""
        self._on_exit.append(close)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.signals.__exit__()
        try:
            for close in reversed(self._on_exit):
                try:
                    close()
                except Exception:
                    if exc_type is None:  # otherwise the error that ended the run is the one to report
                        raise
        finally:
            if self._fd is not None:
                self._release(failed_early=exc_type is not None and not self.worked)

    def _release(self, failed_early: bool) -> None:
        try:
            if failed_early:
                self._remove_new_entries()
        finally:
            release_lock(self.path / LOCK, self._fd)
            self._fd = None
            if failed_early:
                remove_created(self._created)

    def _remove_new_entries(self) -> None:
        for entry in self.path.iterdir():
            if entry.name in self._before or entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def step_done(self, agree: bool = True, ask: bool = True) -> int:
        """Call once per step, after the step: records that work was done, and returns the signal (SIGINT or
        SIGTERM) that asks the run to stop now, or 0. agree: every rank gets the same answer (a collective, so
        every rank must call it at the same steps); without it each rank answers for itself. ask=False only
        records the step and answers 0 (a signal waits for a step that asks)."""
        self.worked = True
        return self.signals.requested(self.device if agree else None) if ask else 0

    def interrupted(self, signum: int, step: int, saved: str = "") -> Interrupted:
        """The exception to raise once the checkpoint of `step` (or what `saved` says) is written."""
        return Interrupted(signum, saved or f"checkpoint of step {step} in {self.path / 'checkpoints'}", self.resume)
