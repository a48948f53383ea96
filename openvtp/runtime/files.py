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
import re
import shutil
import tempfile
from contextlib import contextmanager
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


def follow_umask(path: str | Path) -> None:
    """Give a file the mode `open` would have: safetensors' writer, like `tempfile`, creates files 0600."""
    os.chmod(path, 0o666 & ~umask())


def write_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file` with the user's umask, and an I/O failure (a full disk) raised as the OSError it is
    (safetensors raises its own error type holding only the OS error's text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    follow_umask(path)


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


def remove_stale_temps(*folders: Path, prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Remove what killed atomic writes left in `folders` (call only while no other process writes there), and
    entries whose names start with one of `prefixes` (unmarked temporary names, which folders written by other
    openvtp versions can hold)."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and (TEMP_MARK in entry.name or entry.name.startswith(prefixes)):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def os_error_message(e: OSError, action: str = "") -> str:
    """'PATH: read-only file system' and the like (after `action`, e.g. 'cannot create'), as one line."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EEXIST: "a file is in the way", errno.ENOTDIR: "a file is in the way, not a folder",
              errno.EISDIR: "is a folder"}.get(e.errno, (e.strerror or str(e) or type(e).__name__).lower())
    where = " ".join(w for w in (action, str(e.filename) if e.filename is not None else "") if w)
    return f"{where}: {reason}" if where else reason


@contextmanager
def naming(path: str | Path):
    """An OSError raised inside (a write through a file object) names `path` when it names no file. torch.save
    buries a full disk under a RuntimeError of its zip writer ('unexpected pos'): the OSError is dug out."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, cause.filename or str(path)) from None


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
        e.filename = None
        raise OpenVTPError(f"{what} {path}: cannot write there ({os_error_message(e)})") from None
    return created


def remove_created(created: list[Path]) -> None:
    """Remove folders `writable_dir` created, innermost first, where they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def replace_dir(new: Path, path: Path) -> None:
    """Put folder `new` at `path`, replacing what was there."""
    if path.exists():
        old = temp_dir(path.parent, f"{path.name}.old")
        os.replace(path, old / "x")
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)
