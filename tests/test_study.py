"""`openvtp study`: cells are demo runs, a killed study resumes without redoing finished cells, outputs, errors."""
import json
import signal
import time
from pathlib import Path

import pytest

from openvtp.demo.run import plan_demo
from openvtp.errors import OpenVTPError
from openvtp.experiments.stats import paired
from openvtp.experiments.study import (NO_TIME_LIMITS, aggregate, cell_overrides, check_overrides, comparisons,
                                       machines_markdown, markdown, study_cells)
from openvtp.runtime.machine import describe, label

from .test_cli_demo import GENERATION, STAGE2, _figures
from .test_train import TINY, _cli

STUDY = ["--variants", "ae,vtp", "--tokenizer-steps", "2,3", "--seeds", "0", *TINY, "eval.images=8", *STAGE2,
         *GENERATION]


@pytest.mark.slow
def test_a_killed_study_resumes_without_redoing_its_finished_cells(tmp_path):
    out = tmp_path / "study"
    first, second = (out / "cells" / name / "cell.json" for name in ("vtp-3-s0", "ae-3-s0"))
    killed = _cli("study", "--out", str(out), "--jobs", "1", *STUDY)  # cells one after the other, in one process
    while not second.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = first.read_text(), first.stat().st_mtime_ns

    proc = _cli("study", "--out", str(out), "--jobs", "2", *STUDY)  # the rest side by side, a process each
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "4 cells, 2 already done, 2 to run" in stderr
    assert (first.read_text(), first.stat().st_mtime_ns) == before

    # a cell is the demo run with its overrides: the same figures as `openvtp demo` alone, though the
    # study ran it in a process that had run another cell before
    demo = tmp_path / "demo"
    alone = _cli("demo", "--out", str(demo), *STUDY[6:], "clip.weight=0", "ssl.weight=0", "train.steps=3",
                 "train.seed=0")
    assert alone.wait(timeout=600) == 0, alone.stderr.read()[-3000:]
    assert _figures(demo) == _figures(out / "cells" / "ae-3-s0")

    study = json.loads((out / "study.json").read_text())
    assert sorted(c["cell"] for c in study["cells"]) == ["ae-2-s0", "ae-3-s0", "vtp-2-s0", "vtp-3-s0"]
    assert (out / "study.md").read_text() in stdout and (out / "study.png").stat().st_size > 10_000
    cells = {c["cell"]: c for c in study["cells"]}
    ae, vtp = cells["ae-3-s0"], cells["vtp-3-s0"]
    assert ae["objectives"] == {"rec": 3.0} and set(vtp["objectives"]) == {"clip", "ssl", "rec"}
    # compute: counted per step, the same for both step counts of a variant, more for VTP's extra branches
    assert ae["tokenizer_flops"] == 3 * ae["tokenizer_flops_per_step"] == 1.5 * cells["ae-2-s0"]["tokenizer_flops"]
    assert vtp["tokenizer_flops_per_step"] > ae["tokenizer_flops_per_step"] > 0
    assert "zeroshot_shape" not in ae["understanding"] and vtp["understanding"]["zeroshot_shape"] is not None
    for c in study["cells"]:
        assert c["complete"] and c["generation"]["dit_steps"] == 12 and c["reconstruction"]["psnr"] > 0
        assert c["machine"] == describe()  # where its figures were computed
        assert not (out / "cells" / c["cell"] / "checkpoints").exists()  # bulky intermediates are removed
        assert (out / "cells" / c["cell"] / "decoder" / "tokenizer" / "config.json").is_file()
    # one judge for every cell, trained once
    assert len(list((out / "judge").glob("*.safetensors"))) == 1


def test_the_report_says_when_cells_come_from_more_than_one_machine_kind():
    here, there = describe(), {"cpu": "Other CPU", "isa": ["avx2"], "torch": "2.14.1", "cpu_capability": "AVX2"}
    same = [{"cell": "ae-1-s0", "machine": here}, {"cell": "vtp-1-s0", "machine": here}]
    assert machines_markdown(same) == []
    text = "\n".join(machines_markdown([*same, {"cell": "ae-1-s1", "machine": there}, {"cell": "vtp-1-s1"}]))
    assert f"- {label(here)}: ae-1-s0, vtp-1-s0" in text
    assert "- Other CPU (avx2), torch 2.14.1: ae-1-s1" in text and "- not recorded: vtp-1-s1" in text


def test_cells_and_their_overrides():
    cells = study_cells(["ae", "vtp"], [250, 1000], [0, 1])
    assert [c.name for c in cells[:5]] == ["vtp-1000-s0", "ae-1000-s0", "vtp-250-s0", "ae-250-s0", "vtp-1000-s1"]
    assert cell_overrides(cells[3], ["dit.train.steps=9"]) == ["dit.train.steps=9", "clip.weight=0", "ssl.weight=0",
                                                               "train.steps=250", "train.seed=0", *NO_TIME_LIMITS]
    plan = plan_demo(Path("unused"), cell_overrides(cells[3], []))  # no stage of a cell stops on the wall clock
    assert (plan.pretrain.train.time_limit_s, plan.decoder.train.time_limit_s) == (0, 0)
    assert "train.time_limit_s=0" in plan.dit_overrides
    with pytest.raises(OpenVTPError, match="unknown 'dino'"):
        study_cells(["dino"], [1], [0])
    with pytest.raises(OpenVTPError, match="the study sets train.steps per cell"):
        check_overrides(["train.steps=5"])


def test_aggregate_reports_mean_and_sample_std_over_seeds():
    def cell(seed, frechet):
        return {"cell": f"vtp-10-s{seed}", "variant": "vtp", "tokenizer_steps": 10, "seed": seed, "complete": True,
                "tokenizer_flops": 7e12, "generation": {"frechet_generated": frechet}, "understanding": {},
                "reconstruction": {}}

    rows = aggregate([cell(0, 10.0), cell(1, 14.0), cell(2, 12.0)])
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["frechet_generated"] == {"mean": 12.0, "std": 2.0, "n": 3}
    assert rows[0]["psnr"] is None
    assert "| vtp | 10 | 7.0 | 3 | 12.00 +- 2.00 |" in markdown(rows, [])
    one = aggregate([cell(0, 10.0)])
    assert one[0]["frechet_generated"]["std"] is None and "| vtp | 10 | 7.0 | 1 | 10.00 |" in markdown(one, [])


def test_paired_t_test_reproduces_students_sleep_data():
    # Cushny and Peebles' sleep data, Student's paired example: R's t.test(extra ~ group, data = sleep, paired =
    # TRUE) prints t = -4.0621, df = 9, p-value = 0.002833, 95% CI -2.4598858 -0.7001142, mean difference -1.58
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    r = paired(drug2, drug1)  # drug1 minus drug2
    assert r["n"] == 10 and abs(r["mean"] + 1.58) < 1e-12
    assert abs(r["ci"][0] + 2.4598858) < 1e-6 and abs(r["ci"][1] + 0.7001142) < 1e-6
    assert abs(r["t"] + 4.0621) < 5e-5 and abs(r["p"] - 0.002833) < 5e-7
    d = [y - x for x, y in zip(drug2, drug1)]  # t from its definition
    sd = (sum((v - r["mean"]) ** 2 for v in d) / 9) ** 0.5
    assert abs(r["t"] - r["mean"] / (sd / 10 ** 0.5)) < 1e-9
    one = paired([1.0], [3.0])
    assert one["mean"] == 2.0 and one["ci"] is None and one["p"] is None
    same = paired([1.0, 2.0], [2.0, 3.0])  # no spread: an interval of width 0, no test
    assert same["ci"] == [1.0, 1.0] and same["p"] is None


def test_comparisons_pair_variants_at_equal_steps_and_each_variant_across_steps():
    def cell(variant, steps, seed, frechet, complete=True):
        return {"cell": f"{variant}-{steps}-s{seed}", "variant": variant, "tokenizer_steps": steps, "seed": seed,
                "complete": complete, "tokenizer_flops": 1e12, "generation": {"frechet_generated": frechet},
                "understanding": {}, "reconstruction": {}}

    cells = [cell("ae", 1000, 0, 18.0), cell("ae", 1000, 1, 17.0), cell("ae", 1000, 2, 19.0),
             cell("vtp", 1000, 0, 16.0), cell("vtp", 1000, 1, 16.5), cell("vtp", 1000, 2, 16.0),
             cell("vtp", 1000, 3, 1.0),  # no AE cell at seed 3: not paired
             cell("vtp", 250, 0, 20.0), cell("vtp", 250, 1, 21.0), cell("vtp", 250, 2, 19.0, complete=False)]
    comp = comparisons(cells)
    (pair,) = comp["pairs"]
    assert (pair["a"], pair["b"], pair["tokenizer_steps"]) == ("ae", "vtp", 1000)
    frechet = pair["figures"]["frechet_generated"]
    assert frechet["seeds"] == [0, 1, 2] and frechet["diffs"] == [-2.0, -0.5, -3.0]
    assert frechet["p"] == pytest.approx(paired([18.0, 17.0, 19.0], [16.0, 16.5, 16.0])["p"])
    assert pair["figures"]["psnr"] is None
    (scaling,) = comp["scaling"]  # the incomplete 250-step cell is left out
    assert (scaling["variant"], scaling["from_steps"], scaling["to_steps"]) == ("vtp", 250, 1000)
    assert scaling["figures"]["frechet_generated"]["diffs"] == [-4.0, -4.5]
    text = markdown(aggregate(cells), cells)
    assert "| vtp - ae | 1000 | Frechet | 3 | -1.83 [" in text and "| vtp | 1000 - 250 | Frechet | 2 | -4.25 [" in text


def test_a_study_folder_keeps_one_set_of_settings(tmp_path, capsys):
    from openvtp.experiments.study import _check_settings

    _check_settings(tmp_path, ["dit.train.steps=9"])
    _check_settings(tmp_path, ["dit.train.steps=9"])
    with pytest.raises(OpenVTPError, match="other settings"):
        _check_settings(tmp_path, ["dit.train.steps=10"])


def test_a_second_study_into_a_live_folder_fails(tmp_path):
    from openvtp.experiments.study import run_study
    from openvtp.runtime.run_folder import release_lock, take_lock

    lock = take_lock(tmp_path / "study.lock", "--out")
    try:
        with pytest.raises(OpenVTPError, match="in use by a live run"):
            run_study(tmp_path, ["ae"], [2], [0], [*TINY, *STAGE2, *GENERATION])
    finally:
        release_lock(tmp_path / "study.lock", lock)
    assert not (tmp_path / "cells").exists()


def test_the_judge_is_trained_on_its_thread_count_whoever_calls_it(tmp_path):
    """A study trains the judge in its own process before the cells start; with the process's thread count the
    judge's convolutions would round otherwise than in `openvtp demo`, and every figure would move."""
    import torch

    from openvtp.demo.judge import cached_attribute_probe

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        shared = cached_attribute_probe(tmp_path, 32, 20, 0, threads=1, progress=False)
        assert torch.get_num_threads() == 2  # given back
        torch.set_num_threads(1)
        alone = cached_attribute_probe(None, 32, 20, 0, threads=1, progress=False)
    finally:
        torch.set_num_threads(previous)
    a, b = shared.state_dict(), alone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in tmp_path.iterdir()] == ["judge-32px-20steps-seed0-1threads.safetensors"]
