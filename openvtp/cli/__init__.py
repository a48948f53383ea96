"""`openvtp` command line. The only package that parses argv or calls sys.exit.

One module per group of sub-commands, each with a `register(subparsers)`; commands import what they need when
they run, so `--help` and argument mistakes answer without importing torch. One error path: a user mistake
(OpenVTPError) or a file-system refusal (permission, read-only, full disk: OSError) is printed as one line with a
non-zero exit, and output folders the command created are removed again; a run stopped by SIGINT / SIGTERM prints
the command that resumes it and exits 130 / 143. Under torchrun the process group is this package's
(`distributed.process_group`), so library functions run inside any launcher. `-v` shows third-party INFO logs and the traceback.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from openvtp.errors import Interrupted, OpenVTPError
from openvtp.runtime.files import os_error_message

from . import evaluate, generate, hub, model, train
from .common import Parser, forget_created
from .distributed import process_group

GROUPS = (model, train, evaluate, generate, hub)
VERBOSE_HELP = "also show third-party INFO logs, and the traceback of an error"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="openvtp", description="VTP visual tokenizers: pre-train, evaluate, generate.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    for command in sub.choices.values():  # `openvtp pretrain -v ...` as well as `openvtp -v pretrain ...`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def configure_logging(verbose: bool) -> None:
    """openvtp's own INFO lines always; other libraries' (open_clip prints some on every model build) with -v."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("openvtp").setLevel(logging.INFO)
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resume_command(argv: list[str], resume: tuple[str, ...]) -> str:
    """The command that was run, with `resume` overrides replacing any earlier value of the same keys."""
    keys = tuple(item.split("=", 1)[0] + "=" for item in resume)
    kept = [a for a in argv if not a.startswith(keys)] if keys else list(argv)
    return "openvtp " + shlex.join([*kept, *resume])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # dotted overrides may also follow options: `sample RUN --out DIR sample.method=heun`
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(verbose)
    failed = True
    try:
        with process_group():  # under torchrun: created here, torn down on every way out
            args.func(args)
        failed = False
    except Interrupted as e:
        failed = False
        print(f"openvtp {args.command}: {e}; resume with: {resume_command(argv, e.resume)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"openvtp {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OpenVTPError, OSError) as e:
        if verbose:
            import traceback

            traceback.print_exc()
        message = os_error_message(e) if isinstance(e, OSError) else str(e)
        print(f"openvtp {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        forget_created(failed)
    return 0
