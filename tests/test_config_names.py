"""One name per concept across the config trees: an old key is a one-line error that names the current one, and a
config stored under old keys (a DiT checkpoint's) still loads."""
import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf

from openvtp.cli import main
from openvtp.config.load import RENAMED_KEYS, config_from_dict, config_to_dict, load_config, renamed_keys
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig
from openvtp.errors import OpenVTPError
from openvtp.generation.config import GenerationConfig

DIT = renamed_keys(GenerationConfig)
# a value of each old key that differs from the dit-demo preset's and the defaults
OLD_VALUES = {"model.use_qknorm": True, "data.num_workers": 3, "train.run_dir": "elsewhere", "train.batch_size": 24,
              "train.lr": 3e-4, "train.beta1": 0.8, "train.beta2": 0.9, "train.weight_decay": 0.01,
              "train.grad_clip": 2.0, "sample.batch_size": 5, "fid.batch_size": 7, "fid.inception": "random"}


def _keys(schema) -> set[str]:
    """Every leaf key of a config tree, dotted."""
    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from walk(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return set(walk(schema(), ""))


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_table_maps_keys_that_are_gone_to_keys_that_exist():
    assert set(OLD_VALUES) == set(DIT)
    keys = _keys(GenerationConfig)
    assert {"train.out_dir", "train.batch", "data.workers", "model.use_qk_norm", "optim.lr"} <= keys
    for old, new in DIT.items():
        assert old not in keys and new in keys, (old, new)
    # the current names are the pre-training tree's where both trees have the section
    pretrain = _keys(PretrainConfig)
    for new in DIT.values():
        if new.split(".", 1)[0] in ("data", "train", "optim"):
            assert new in pretrain, new
    assert set(RENAMED_KEYS) == {"openvtp.generation.config.GenerationConfig"}
    assert renamed_keys(PretrainConfig) == {} and renamed_keys(FinetuneDecoderConfig) == {}


@pytest.mark.parametrize("old", sorted(DIT))
def test_an_old_key_on_the_command_line_names_the_new_one(old):
    with pytest.raises(OpenVTPError) as e:
        load_config(GenerationConfig, "dit-demo", [f"{old}={OLD_VALUES[old]}"])
    assert str(e.value) == f"config key '{old}' was renamed '{DIT[old]}'"


def test_an_old_key_in_a_yaml_file_names_the_file_and_the_new_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  steps: 10\n  run_dir: runs/x\n")
    with pytest.raises(OpenVTPError) as e:
        load_config(GenerationConfig, str(path))
    assert str(e.value) == f"config key 'train.run_dir' in {path} was renamed 'train.out_dir'"


def test_the_new_keys_load():
    new = [f"{DIT[old]}={value}" for old, value in OLD_VALUES.items()]
    cfg = load_config(GenerationConfig, "dit-demo", new)
    for old, value in OLD_VALUES.items():
        assert _get(cfg, DIT[old]) == value


@pytest.mark.parametrize("argv", [
    ["demo", "--print-config", "dit.train.batch_size=8"],
    ["demo-generation", "runs/nowhere", "dit.train.batch_size=8"],
])
def test_the_demo_names_the_prefixed_key(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config key 'dit.train.batch_size' was renamed 'dit.train.batch'" in err[0], err


def _old_layout(cfg: GenerationConfig) -> dict:
    """`cfg` as the openvtp that used the old keys stored it in a checkpoint."""
    data = config_to_dict(cfg)
    for old, new in DIT.items():
        section, key = new.split(".")
        value = data[section].pop(key)
        osection, okey = old.split(".")
        data[osection][okey] = value
    del data["optim"]
    return data


def test_a_stored_config_with_old_keys_is_translated(tmp_path):
    cfg = load_config(GenerationConfig, "dit-demo", [f"{DIT[old]}={value}" for old, value in OLD_VALUES.items()])
    old = _old_layout(cfg)
    assert "run_dir" in old["train"] and "optim" not in old
    assert config_from_dict(GenerationConfig, old) == cfg
    assert "run_dir" in old["train"]  # the caller's dict is left as it was
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_config(GenerationConfig, str(path), ["sample.num_steps=3"], stored=True) == \
        dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, num_steps=3))
    with pytest.raises(OpenVTPError, match="config key 'sample.batch_size' was renamed 'sample.batch'"):
        load_config(GenerationConfig, str(path), ["sample.batch_size=3"], stored=True)


def test_sample_and_gfid_read_an_old_checkpoint_config(tmp_path):
    """`openvtp sample` / `gfid` read config.yaml of the checkpoint folder; one written with the old keys loads."""
    from openvtp.cli.generate import _checkpoint_config

    cfg = load_config(GenerationConfig, "dit-demo", ["train.batch=24", "sample.batch=5", "optim.lr=3e-4"])
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000004"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"")
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(_old_layout(cfg))))
    found, loaded = _checkpoint_config(str(tmp_path / "run"), ["sample.num_steps=3"])
    assert found == ckpt
    assert (loaded.train.batch, loaded.sample.batch, loaded.optim.lr, loaded.sample.num_steps) == (24, 5, 3e-4, 3)


def test_base_is_rejected_not_dropped(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("_base_: vtp-l\ntrain:\n  steps: 10\n")
    with pytest.raises(OpenVTPError) as e:
        load_config(PretrainConfig, str(path))
    assert str(e.value).startswith(f"config file {path}: '_base_' is not supported")
