"""Every `openvtp ...` command in a fenced block of README.md and docs/*.md names a real command, real flags and
real config keys, so the docs cannot drift from the code. Commands whose data the test cannot have are parsed
only; training and generation commands also resolve their config with `--print-config`."""
import dataclasses
import shlex
import typing
from pathlib import Path

import pytest

from openvtp.cli import build_parser, main
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig
from openvtp.generation.config import GenerationConfig
from openvtp.demo.generation_config import GenerationDemoConfig

REPO = Path(__file__).resolve().parents[1]
DEMO_PREFIXES = {"decoder.": FinetuneDecoderConfig, "dit.": GenerationConfig, "generation.": GenerationDemoConfig}
SCHEMAS = {"pretrain": PretrainConfig, "finetune-decoder": FinetuneDecoderConfig, "train-dit": GenerationConfig,
           "sample": GenerationConfig, "gfid": GenerationConfig, "demo-generation": None, "demo": None, "study": None}
PRINTS_CONFIG = ("pretrain", "finetune-decoder", "train-dit", "demo", "study")


def shell_lines(text: str):
    """(line number, logical line) of every fenced code block, continuation lines joined."""
    fenced, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def openvtp_argv(line: str) -> list[list[str]]:
    """The arguments after `openvtp` (or `-m openvtp`) of each command of a shell line."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in (";", "&&", "||", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for command in commands:
        for i, token in enumerate(command):
            if token == "openvtp" or token.endswith("/openvtp"):
                if i == 0 or all("=" in t for t in command[:i]) or command[i - 1] == "-m":
                    found.append(command[i + 1:])
                break
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [(f"{path.relative_to(REPO)}:{number}", argv) for path in docs
            for number, line in shell_lines(path.read_text()) for argv in openvtp_argv(line)]


def has_key(schema: type, dotted: str) -> bool:
    cls = schema
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
        origin = typing.get_origin(cls)
        if origin is dict:  # a free-form mapping: any key below it
            return True
        if origin is not None and type(None) in typing.get_args(cls):
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    return not dataclasses.is_dataclass(cls)  # a leaf, not a whole section


def check_key(command: str, key: str) -> bool:
    if command in ("demo", "study", "demo-generation"):
        for prefix, schema in DEMO_PREFIXES.items():
            if key.startswith(prefix):
                return has_key(schema, key[len(prefix):])
        return command != "demo-generation" and has_key(PretrainConfig, key)
    return has_key(SCHEMAS[command], key)


def check(argv: list[str]) -> list[str]:
    """What is wrong with `openvtp ARGV` as documentation: an unknown command, flag or config key."""
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    if not argv or argv[0] not in choices:
        return [f"no command {argv[:1]}"] if argv and not argv[0].startswith("-") else []
    sub = choices[argv[0]]
    problems = []
    sub.error = lambda message: problems.append(message) or (_ for _ in ()).throw(SystemExit(2))
    try:
        args, extra = sub.parse_known_args(argv[1:])
    except SystemExit:
        return problems or ["arguments rejected"]
    problems += [f"unknown flag {e}" for e in extra if e.startswith("-")]
    overrides = [o for o in [*getattr(args, "overrides", []), *(e for e in extra if not e.startswith("-"))]
                 if o != "..."]  # "..." stands for more arguments
    if argv[0] in SCHEMAS:
        for item in overrides:
            if "=" not in item:
                problems.append(f"not KEY=VALUE: {item}")
            elif not check_key(argv[0], item.split("=", 1)[0]):
                problems.append(f"no config key {item.split('=', 1)[0]}")
    return problems


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20, COMMANDS
    assert {argv[0] for _, argv in COMMANDS} >= {"pretrain", "eval", "demo", "study", "train-dit"}


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_names_real_flags_and_keys(where, argv):
    assert check(argv) == [], f"{where}: openvtp {shlex.join(argv)}"


def test_the_check_catches_renamed_flags_and_keys():
    assert check(["pretrain", "--config", "demo", "train.steps=3"]) == []
    assert check(["pretrain", "--config", "demo", "train.stepz=3"]) == ["no config key train.stepz"]
    assert check(["pretrain", "--confg", "demo"]) != []
    assert check(["demo", "decoder.train.steps=2", "dit.train.steps=3", "generation.judge_steps=4"]) == []
    assert check(["demo", "decoder.train.stepz=2"]) == ["no config key decoder.train.stepz"]
    assert check(["pretrain", "--config", "demo", "train=3"]) == ["no config key train"]  # a section, not a value
    assert check(["pretrainz"]) == ["no command ['pretrainz']"]


@pytest.mark.parametrize("where,argv", [(w, a) for w, a in COMMANDS if a[0] in PRINTS_CONFIG and "--help" not in a
                                        and "--print-config" not in a], ids=lambda x: x if isinstance(x, str) else "")
def test_a_documented_training_command_resolves_its_config(where, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output folders of the docs land here, and --print-config makes none
    rc = main([*(a for a in argv if a != "..."), "--print-config"])
    err = capsys.readouterr().err
    assert rc == 0, f"{where}: openvtp {shlex.join(argv)} --print-config: {err.strip()}"
    assert not any(tmp_path.iterdir())
