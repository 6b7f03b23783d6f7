import math

import numpy as np
import pytest
import torch

from hsrm.cost import CostRow, Timer, cost_markdown, count_flops, count_parameters, timed
from hsrm.errors import HsrmError
from hsrm.heads import make_head
from tests.conftest import make_features


def test_count_parameters_trainable_only():
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    assert count_parameters(m) == 15 + 8
    m[0].weight.requires_grad_(False)
    assert count_parameters(m) == 3 + 8
    assert count_parameters(m, trainable_only=False) == 23
    with pytest.raises(HsrmError, match="cannot count"):
        count_parameters(object())


def test_count_flops_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    out, flops = count_flops(torch.matmul, a, b)
    assert out.shape == (8, 4)
    assert flops == 2 * 8 * 16 * 4


def test_head_flops_are_counted_per_token():
    X, y, g = make_features(n_prompts=10, seed=3)
    head = make_head("elhsr", lr=1e-2, max_epochs=2).fit(X, y, g)
    Xs = X.subset(range(5))
    _, flops = count_flops(head.score, Xs)
    L, d = len(X.layers), X.hidden_size
    # One (L*d -> 2) linear per padded token position of the batch.
    T = max(Xs[i].shape[0] for i in range(5))
    assert flops == 2 * 5 * T * L * d * 2
    assert count_parameters(head) == L * d * 2 + 2


def test_timer_and_timed():
    with Timer() as t:
        sum(range(1000))
    assert t.seconds >= 0 and not math.isnan(t.seconds)
    assert t.cpu_seconds >= 0 and not math.isnan(t.cpu_seconds)
    out, s = timed(lambda x: x + 1, 1, repeat=3)
    assert out == 2 and s >= 0
    out, s = timed(lambda: sum(range(10_000)), repeat=2, cpu=True)
    assert out == sum(range(10_000)) and s >= 0
    with pytest.raises(HsrmError, match="repeat"):
        timed(lambda: 0, repeat=0)


def test_cost_row_ratios_and_table():
    r = CostRow(
        "elhsr",
        100,
        1e-6,
        2e3,
        extra_seconds=0.01,
        extra_flops=1e6,
        sample_seconds=1.0,
        sample_flops=1e9,
    )
    assert r.bon_ratio_seconds == pytest.approx(1.01)
    assert r.bon_ratio_flops == pytest.approx(1.001)
    d = r.to_dict()
    assert d["bon_cost_ratio_seconds"] == pytest.approx(1.01) and d["trainable_params"] == 100
    md = cost_markdown([r])
    assert "| elhsr | 100 |" in md and "1.010" in md
    assert np.isfinite(d["score_flops_per_sample"])
