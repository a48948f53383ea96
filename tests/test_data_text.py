"""The tokenizer reproduces the official VTP/OpenCLIP token ids."""
import json
from pathlib import Path

import pytest
import torch

from openvtp.data.text import tokenize

_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [d / "shared/conformance/tiny-swiglu-rms/meta.json" for d in (_REPO, _REPO.parent)]
META = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[-1])


@pytest.mark.skipif(not META.exists(), reason="conformance fixtures not present")
def test_tokenizer_matches_official_ids():
    meta = json.load(open(META))
    ids = tokenize(meta["text_strings"])
    assert ids.dtype == torch.long and ids.shape == (3, 77)
    assert torch.equal(ids, torch.tensor(meta["text_official_token_ids"]))
    assert tokenize("a red circle", context_length=16).shape == (1, 16)
    long = tokenize(" ".join(["word"] * 200))
    assert long[0, -1] == 49407
