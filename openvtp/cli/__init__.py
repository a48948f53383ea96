"""`openvtp` command line. The only package that parses argv or calls sys.exit.

One module per group of sub-commands, each with a `register(subparsers)`; commands import
what they need lazily, so `openvtp info` does not import the training stack. User mistakes
surface as OpenVTPError and are printed as one line with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys

from openvtp.errors import OpenVTPError

from . import evaluate, generate, model, train

GROUPS = (model, train, evaluate, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openvtp", description="VTP visual tokenizers: pre-train, evaluate, generate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # dotted overrides may also follow options: `sample RUN --out DIR sample.method=heun`
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except OpenVTPError as e:
        print(f"openvtp {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"openvtp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
