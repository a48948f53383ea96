from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.fail(f"conformance fixtures not found at {CONFORMANCE} (../shared must sit beside the repository)")
    return CONFORMANCE


@pytest.fixture
def one_thread():
    """One torch thread for the test, as `pretrain` and the CLI children set it (train.threads): bit-for-bit
    comparisons need the same reduction order, and compiled graphs guard on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
