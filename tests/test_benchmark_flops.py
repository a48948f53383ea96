"""The FLOP count the benchmarks measure against the matmul peak: CPU attention is counted like CUDA's."""
import importlib.util

import torch
import torch.nn.functional as F

from .conftest import REPO


def load_peak():
    spec = importlib.util.spec_from_file_location("peak", REPO / "benchmarks" / "peak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_attention_counts_its_two_matmuls():
    peak = load_peak()
    b, h, s, d = 2, 3, 40, 16
    q = torch.randn(b, h, s, d, requires_grad=True)
    forward = peak.flops_by_op(lambda: F.scaled_dot_product_attention(q, q, q))
    assert forward == {"aten::_scaled_dot_product_flash_attention_for_cpu": 2 * (2 * b * h * s * s * d)}
    both = peak.flops_by_op(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both["aten::_scaled_dot_product_flash_attention_for_cpu_backward"] == 5 * (2 * b * h * s * s * d)
    x, w = torch.randn(5, 7), torch.randn(7, 3)
    total = peak.counted_flops(lambda: (x @ w, F.scaled_dot_product_attention(q, q, q)))
    assert total == 2 * 5 * 7 * 3 + 4 * b * h * s * s * d
