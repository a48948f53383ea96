"""Output files and folders: the user's umask, temporary names, writable-folder checks, OS errors as one line.

Atomic writers create a temporary name beside the target and rename it into place. `tempfile` creates those
0600 / 0700 whatever the umask, so the modes are set here to what a plain `open` / `mkdir` would give: a tokenizer
or run folder written under umask 022 is readable by colleagues. Every temporary name starts with `.` and
contains TEMP_MARK, so a run that starts again can tell the leftovers of a killed write from everything else.
No torch here: the CLI uses this module before it imports anything heavy.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from openvtp.errors import OpenVTPError

TEMP_MARK = ".tmp-"


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(parent: Path, name: str):
    """(fd, path) of a new temporary file for `parent / name`, with the mode `open` would give it."""
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}{TEMP_MARK}")
    os.fchmod(fd, 0o666 & ~umask())
    return fd, Path(tmp)


def temp_dir(parent: Path, name: str) -> Path:
    """A new temporary folder for `parent / name`, with the mode `mkdir` would give it."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}{TEMP_MARK}"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def remove_stale_temps(*folders: Path) -> list[Path]:
    """Remove what killed atomic writes left in `folders` (call only while no other process writes there)."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and TEMP_MARK in entry.name:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def os_error_message(e: OSError, action: str = "cannot write") -> str:
    """'cannot write PATH: read-only file system' and the like, for the errors users hit on output locations."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EEXIST: "a file is in the way", errno.ENOTDIR: "a file is in the way, not a folder",
              errno.EISDIR: "is a folder"}.get(e.errno, (e.strerror or type(e).__name__).lower())
    where = e.filename if e.filename is not None else ""
    return f"{action} {where}: {reason}" if where else f"{action}: {reason}"


def writable_dir(path: str | Path, what: str) -> list[Path]:
    """Create folder `path` (with parents) and check that files can be written in it, before any work.

    `what` names the setting in messages (`--out`, `train.out_dir`). Returns the folders this call created,
    outermost first, so a command that fails later can remove them again.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OpenVTPError(f"{what} {path}: is a file, not a folder")
    created = []
    for parent in (*reversed(path.parents), path):
        if parent.exists():
            if not parent.is_dir():
                raise OpenVTPError(f"{what} {path}: {parent} is a file, not a folder")
            continue
        try:
            parent.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            remove_created(created)
            raise OpenVTPError(f"{what} {path}: {os_error_message(e, 'cannot create')}") from None
        created.append(parent)
    try:
        fd, probe = temp_file(path, "write-check")
        os.close(fd)
        probe.unlink()
    except OSError as e:
        remove_created(created)
        raise OpenVTPError(f"{what} {path}: cannot write there ({os_error_message(e).split(': ', 1)[-1]})") from None
    return created


def remove_created(created: list[Path]) -> None:
    """Remove folders `writable_dir` created, innermost first, where they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass
