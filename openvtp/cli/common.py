"""What every command shares: argument types, output folders checked before work, the help format.

No torch here, so `--help` and the mistakes argparse or these checks catch answer at once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from openvtp.files import remove_created, writable_dir

_created: list[Path] = []  # output folders this command created; removed again (if empty) when it fails


def output_folder(path: str | Path, flag: str) -> Path:
    """Create output folder `path` and check that it can be written, before any work; `flag` names it in errors."""
    _created.extend(writable_dir(path, flag))
    return Path(path)


def forget_created(failed: bool) -> None:
    """At the end of a command: a failed one takes back the empty folders it made."""
    if failed:
        remove_created(_created)
    _created.clear()


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (argparse names the flag in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds '(default: X)' to an option's help unless the help already speaks of its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default in ("", [], argparse.SUPPRESS):
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every sub-command's parser: defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
