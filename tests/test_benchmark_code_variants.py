"""pretrain_speed.py's variants that run another checkout's code: the child imports openvtp from it, or the
script stops before timing anything (an A/B whose two arms run the same code would report a false ratio)."""
import importlib.util
import sys

import pytest

from .conftest import REPO


def load_pretrain_speed():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports peak.py beside it
    try:
        spec = importlib.util.spec_from_file_location("pretrain_speed", REPO / "benchmarks" / "pretrain_speed.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["pretrain_speed"] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_a_variant_names_its_code_and_the_child_imports_it(tmp_path):
    speed = load_pretrain_speed()
    plain = speed.parse_variant("2 threads: train.threads=2 data.workers=0")
    assert (plain.name, plain.overrides, plain.code) == ("2 threads", ["train.threads=2", "data.workers=0"], None)
    other = tmp_path / "checkout"
    (other / "openvtp").mkdir(parents=True)
    (other / "openvtp" / "__init__.py").write_text("")
    before = speed.parse_variant(f"before: @{other} train.threads=1")
    assert (before.name, before.overrides, before.code) == ("before", ["train.threads=1"], other.resolve())
    speed.check_code(before)  # imports tmp_path/checkout/openvtp: passes
    speed.check_code(plain)
    with pytest.raises(SystemExit, match="openvtp comes from .*, not from"):
        speed.check_code(speed.parse_variant(f"empty: @{tmp_path / 'nothing'}"))
