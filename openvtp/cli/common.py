"""What every command shares: argument types, output folders checked before work, the help format.

No torch here, so `--help` and the mistakes argparse or these checks catch answer at once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from openvtp.runtime.files import remove_created, writable_dir
from openvtp.runtime.precision import PRECISIONS

_created: list[Path] = []  # output folders this command created; removed again (if empty) when it fails


def output_folder(path: str | Path, flag: str) -> Path:
    """Create output folder `path` and check that it can be written, before any work; `flag` names it in errors."""
    _created.extend(writable_dir(path, flag))
    return Path(path)


PRINT_CONFIG_HELP = "print the resolved, validated config as YAML and exit without work"


def config_args(p, config_help: str, overrides_help: str, default: str | None = None) -> None:
    """`--config` (required unless it has a default), dotted `overrides` and `--print-config`, as every training
    command takes them."""
    p.add_argument("--config", required=default is None, default=default, help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)


def run_training(args, cfg, section: str, trainer: str) -> None:
    """A training command once its config is validated: `--print-config`, or the output folder checked and
    `trainer` ("module:function", imported only now: `--print-config` needs no torch) run on `cfg`, printing the
    summary it returns (rank 0)."""
    if args.print_config:
        return print_config(**{section: cfg})
    output_folder(cfg.train.out_dir, "train.out_dir")
    import importlib

    module, function = trainer.split(":")
    summary = getattr(importlib.import_module(module), function)(cfg)
    if summary:
        import json

        print(json.dumps(summary, indent=2))


def print_config(**configs) -> None:
    """The resolved configs as one YAML document (a section per stage where there are several)."""
    from omegaconf import OmegaConf

    tree = {name: OmegaConf.structured(cfg) if not isinstance(cfg, dict) else cfg for name, cfg in configs.items()}
    if len(tree) == 1:
        print(OmegaConf.to_yaml(next(iter(tree.values()))), end="")
    else:
        print(OmegaConf.to_yaml(OmegaConf.create(tree)), end="")


def forget_created(failed: bool) -> None:
    """At the end of a command: a failed one takes back the empty folders it made."""
    if failed:
        remove_created(_created)
    _created.clear()


def _int_at_least(lowest: int, what: str):
    """An argparse type: an integer >= `lowest` (argparse names the flag in its one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def precision_arg(parser: argparse.ArgumentParser, auto: str) -> None:
    """`--precision auto|fp32|bf16`; `auto` says what auto means for this command."""
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help=f"arithmetic: fp32 (the model's own), bf16 (autocast: faster on CPUs with bf16 "
                             f"matmuls, about 3 significant digits) or {auto}")


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
    """Every command's parser: defaults in --help, and a flag mistake as one line (not the whole usage)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
