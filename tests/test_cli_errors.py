"""One error path: every mistake is one line, a non-zero exit, and nothing left behind (issue 18).

Unwritable places are made for real: a read-only tmpfs mount, or (without the right to mount) a 0555 folder with
CAP_DAC_OVERRIDE dropped by setpriv, since root writes through permission bits; the tests skip when neither works.
"""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openvtp.cli import build_parser, main

from .conftest import CONFORMANCE

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")


def cli(*args, prefix=(), cwd=None):
    """`openvtp ARGS` as a fresh process (optionally under `prefix`, e.g. setpriv)."""
    return subprocess.run([*prefix, sys.executable, "-m", "openvtp", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True).returncode == 0


@pytest.fixture
def unwritable(tmp_path):
    """(folder nobody may write in, command prefix the CLI must run under for that to hold)."""
    ro = tmp_path / "ro"
    if _mount(ro, "ro,size=64k"):
        yield ro, ()
        subprocess.run(["umount", str(ro)], check=False)
        return
    setpriv = shutil.which("setpriv")
    prefix = (setpriv, "--inh-caps=-dac_override", "--bounding-set=-dac_override") if setpriv else ()
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    if not setpriv or subprocess.run([*prefix, "touch", str(ro / "x")], capture_output=True).returncode == 0:
        ro.chmod(0o755)
        pytest.skip("cannot make an unwritable folder here: no tmpfs mount (CAP_SYS_ADMIN) and no setpriv")
    yield ro, prefix
    ro.chmod(0o755)


def test_unwritable_or_file_output_locations_are_one_line(tmp_path, unwritable):
    ro, prefix = unwritable
    one_line_error(cli("pretrain", "--config", "demo", f"train.out_dir={ro / 'run'}", prefix=prefix),
                   f"train.out_dir {ro / 'run'}: cannot create {ro / 'run'}:")
    one_line_error(cli("eval", MODEL, "--data", "embedded", "--out", ro, prefix=prefix),
                   f"--out {ro}: cannot write there (")
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_line_error(cli("demo", "--out", a_file), f"--out {a_file}: is a file, not a folder")
    one_line_error(cli("extract-latents", MODEL, "--data", "embedded", "--out", a_file / "sub"),
                   f"--out {a_file / 'sub'}: {a_file} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]


def test_full_disk_is_one_line_and_leaves_no_temporary_checkpoint(tmp_path, monkeypatch, capsys):
    """A 1 MB tmpfs when mounting is allowed; otherwise the checkpoint writer is made to fail with ENOSPC."""
    from .test_train import TINY

    full = tmp_path / "full"
    if not _mount(full, "size=1m"):
        import openvtp.runtime.checkpoint as checkpoint

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(checkpoint.torch, "save", no_space)
    try:
        rc = main(["pretrain", "--config", "demo", *TINY, "train.steps=1", "eval.images=8",
                   f"train.out_dir={full / 'run'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1
        assert err[-1].startswith("openvtp pretrain: error: ") and err[-1].endswith(": no space left on device")
        assert "checkpoints" in err[-1] and "Traceback" not in "\n".join(err)
        assert [p.name for p in (full / "run" / "checkpoints").iterdir()] == []  # no half-written step folder
    finally:
        subprocess.run(["umount", str(full)], check=False, capture_output=True)


def test_config_mistakes_are_one_line_and_create_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  stepz: 10\n")
    run = tmp_path / "run"
    cases = [
        (["--config", bad], f"invalid YAML in {bad}, line 3, column 1: did not find expected ',' or ']'"),
        (["--config", typo], f"config error in {typo} at 'train.stepz': Key 'stepz' not in 'TrainConfig'"),
        (["--config", "demo", "train.stepz=1"], "config error in command line at 'train.stepz'"),
        (["--config", "demo", "optim.lr=-1"], "config 'optim.lr': must be positive, got -1.0"),
        (["--config", "demo", "train.batch=-4"], "config 'train.batch': must be positive, got -4"),
        (["--config", "demo", "train.batch=0", "ssl.weight=0", "recon.weight=0"], "config 'train.batch': must be positive"),
    ]
    for args, needle in cases:
        one_line_error(cli("pretrain", *args, f"train.out_dir={run}"), needle)
    assert not run.exists()


def test_a_run_that_fails_before_its_first_step_leaves_nothing(tmp_path, capsys):
    """The data path is only opened once the run folder is set up: config.yaml and friends must go again."""
    from .test_train import TINY

    run, kept = tmp_path / "new" / "run", tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (run, kept):
        rc = main(["pretrain", "--config", "demo", *TINY, "data.source=folder", f"data.path={tmp_path / 'nothing'}",
                   f"train.out_dir={out}"])
        assert rc == 1 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


@pytest.fixture
def two_images(tmp_path):
    paths = []
    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        rng = np.random.default_rng(i)
        paths.append(tmp_path / folder / "x.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_reconstruct_gives_images_with_the_same_name_distinct_outputs(tmp_path, two_images, capsys):
    assert main(["reconstruct", MODEL, *map(str, two_images), "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a_x_recon.png", "b_x_recon.png"]
    with Image.open(tmp_path / "d" / "a_x_recon.png") as a, Image.open(tmp_path / "d" / "b_x_recon.png") as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert main(["reconstruct", MODEL, str(two_images[0]), str(two_images[0]), "--out", str(tmp_path / "e")]) == 1
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_flag_mistakes_name_the_flag(tmp_path, two_images, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reconstruct", MODEL, str(two_images[0]), "--out", str(tmp_path / "d"), "--size", "-16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "argument --size: must be a positive integer, got -16" in err[0]
    assert main(["reconstruct", MODEL, str(tmp_path / "a"), "--out", str(tmp_path / "d")]) == 1
    assert f"{tmp_path / 'a'} is a folder, not an image file" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_eval_of_a_caption_file_whose_images_are_all_missing(tmp_path, capsys):
    csv = tmp_path / "captions.csv"
    csv.write_text("file,caption\nnowhere/1.png,a red circle\nnowhere/2.png,a blue square\n")
    rc = main(["eval", MODEL, "--data", str(csv), "--tasks", "retrieval", "--out", str(tmp_path / "ev"),
               "--workers", "0", "--no-progress"])
    assert rc == 1
    assert "none of its 2 images could be read" in capsys.readouterr().err.strip().splitlines()[-1]


def test_help_shows_defaults_and_one_name_for_fid_weights():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "(default: 64)" in sub["eval"].format_help()
    assert "(default: 10000)" in " ".join(sub["extract-latents"].format_help().split())
    for command in ("eval", "fid", "gfid"):
        flags = {s for a in sub[command]._actions for s in a.option_strings}
        assert "--fid-weights" in flags and not flags & {"--weights", "--inception"}, command


def test_the_cli_answers_help_and_config_mistakes_without_torch(tmp_path):
    """What makes `openvtp --help` fast (benchmarks/cli_startup.py times it): torch is not imported."""
    code = ("import sys\nfrom openvtp.cli import main\n"
            "for argv in (['pretrain', '--config', 'demo', 'optim.lr=-1'], ['finetune-decoder', 'x', 'train.steps=0'],\n"
            "             ['train-dit', '--config', 'dit-demo', 'flow.timestep_sampling=cosine'],\n"
            "             ['eval', 'x', '--data', 'embedded', '--tasks', 'foo'],\n"
            "             ['eval', '/nonexistent', '--data', 'embedded'],\n"
            f"             ['eval', {str(tmp_path)!r}, '--data', '/nonexistent/images',\n"
            f"              '--out', {str(tmp_path / 'out')!r}]):\n"
            "    assert main(argv) == 1, argv\n"
            "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "unknown task 'foo'" in proc.stderr and "model not found: /nonexistent" in proc.stderr
    assert "--data /nonexistent/images: not found" in proc.stderr and not (tmp_path / "out").exists()
    from openvtp.generation.config import TIMESTEP_SAMPLING
    from openvtp.losses.flow import TIMESTEP_SAMPLING as modes

    assert TIMESTEP_SAMPLING == modes  # named twice so that configs load without torch
