"""Head structure: one meaning of n_parameters, variants by defaults, abilities as protocols,
derived features behind TokenFeatures' public API."""

import numpy as np
import pytest
import torch

from hsrm.features import logit_features
from hsrm.heads import make_head
from hsrm.heads._defaults import with_defaults
from hsrm.heads.abilities import HallucinationScorer, LatentSelector, TokenScorer
from hsrm.heads.elhsr import ELHSRHead
from tests.conftest import make_features


@pytest.fixture(scope="module")
def data():
    return make_features(n_prompts=12, per_prompt=4, layers=(0, 2, 4), seed=3)


def test_n_parameters_counts_trained_weights_only(data):
    X, y, g = data
    elhsr = make_head("elhsr", layers=[2], max_epochs=2, standardize=True).fit(X, y, g)
    assert elhsr.n_parameters() == sum(p.numel() for p in elhsr.net_.parameters())
    assert elhsr.n_parameters() < sum(t.numel() for t in elhsr._state()[0].values())  # buffers
    harp = make_head("harp", projection="random", size=4, layer=4, epochs=2, hidden=8).fit(X, y, g)
    assert harp.n_parameters() == sum(p.numel() for p in harp.net_.parameters())  # not the basis
    probe = make_head("probe", layer=2).fit(X, y, g)
    assert probe.n_parameters() == X.hidden_size + 1  # weights + bias, not mean / std
    with pytest.raises(Exception, match="not fitted|fit"):
        make_head("probe").n_parameters()


def test_variants_change_defaults_not_constructors():
    logits = make_head("elhsr_logits")
    assert logits.memory_gb == 1.0 and logits.standardize is True and logits.final_norm is False
    assert "final_norm" not in logits.param_names()  # fixed, not a parameter
    assert make_head("elhsr_toplogprobs").memory_gb == 4.0
    assert make_head("denserm").features == "dense" and make_head("sparserm").features != "dense"
    assert make_head("elhsr_logits", lr=0.5).lr == 0.5
    with pytest.raises(TypeError, match="no parameter"):

        @with_defaults(nope=1)
        class Bad(ELHSRHead):
            pass


def test_abilities_are_protocols(data):
    X, y, g = data
    harp = make_head("harp", projection="random", size=4, layer=4, epochs=2, hidden=8).fit(X, y, g)
    assert isinstance(harp, HallucinationScorer)
    assert not isinstance(make_head("elhsr"), HallucinationScorer)
    assert isinstance(make_head("elhsr"), TokenScorer)
    assert isinstance(make_head("sparserm"), LatentSelector)
    assert not isinstance(make_head("probe"), LatentSelector)


def test_logit_features_through_public_map(data):
    X, _, _ = data
    W = torch.randn(7, X.hidden_size)
    L = logit_features(X, W, layer=4)
    assert L.layers == (-1,) and L.hidden_size == 7 and len(L) == len(X)
    want = torch.log_softmax(X[5][:, X.layers.index(4)] @ W.T, -1)
    torch.testing.assert_close(L[5][:, 0], want)
    torch.testing.assert_close(L.logprobs(5), X.logprobs(5))  # log-probs carried over
    m = X.map(lambda x: x[:, :1] * 2, (0,), X.fingerprint)
    np.testing.assert_allclose(m[0].numpy(), X[0][:, :1].numpy() * 2)
