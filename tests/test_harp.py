import json

import numpy as np
import pytest
import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads import Head, make_head
from hsrm.metrics import auroc
from hsrm.models import ModelFingerprint
from hsrm.subspace import cache_path, svd_of

D = 16
FP = ModelFingerprint("toy", "rev0", 4, D, 64)
LAYERS = (2, 4)
FAST = {"hidden": 32, "lr": 1e-2, "epochs": 10, "size": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def svd():
    W = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    return svd_of(W, FP)


def _data(svd, n=240, seed=0, one_token=False):
    """Answers whose correctness is written along the *smallest* singular direction of the last
    layer (in the reasoning subspace); wrong answers carry it on one token when ``one_token``."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    v = svd.V[:, -1]
    xs, ys, groups, planted = [], [], [], []
    for i in range(n):
        y = int(rng.random() < 0.5)
        T = int(rng.integers(3, 8))
        x = torch.randn(T, len(LAYERS), D, generator=g)
        if one_token:
            t = int(rng.integers(T))
            if not y:
                x[t, 1] += 4.0 * v
            planted.append(t if not y else -1)
        else:
            x[:, 1] += (1.5 if y else -1.5) * v
        xs.append(x)
        ys.append(y)
        groups.append(f"q{i // 3}")
    return (
        TokenFeatures.from_tensors(xs, LAYERS, FP),
        np.array(ys),
        np.array(groups),
        np.array(planted),
    )


@pytest.fixture(scope="module")
def basis_file(svd, tmp_path_factory):
    return str(svd.save(tmp_path_factory.mktemp("svd") / "svd.safetensors"))


def test_reasoning_basis_reads_the_signal_semantic_does_not(svd, basis_file):
    X, y, g, _ = _data(svd, n=150)
    Xt, yt, _, _ = _data(svd, n=90, seed=1)
    reasoning = make_head("harp", basis_file=basis_file, **FAST).fit(X, y, g)
    semantic = make_head("harp", basis_file=basis_file, projection="semantic", **FAST).fit(X, y, g)
    assert reasoning.basis_.shape == (D, 2)
    torch.testing.assert_close(reasoning.basis_, svd.V[:, -2:])
    assert auroc(reasoning.score(Xt), yt) > 0.9
    assert auroc(semantic.score(Xt), yt) < 0.75
    # the full state sees it too
    full = make_head("harp", projection="full", **FAST).fit(X, y, g)
    assert full.basis_.shape == (D, D) and auroc(full.score(Xt), yt) > 0.85


def test_projection_shapes(svd, basis_file):
    X, y, g, _ = _data(svd, n=60)
    for proj, k in (("random", 2), ("none", 2), ("full", D), ("semantic", 2)):
        h = make_head("harp", projection=proj, basis_file=basis_file, **{**FAST, "epochs": 1}).fit(
            X, y, g
        )
        assert h.basis_.shape == (D, k)
        torch.testing.assert_close(h.basis_.T @ h.basis_, torch.eye(k), atol=1e-5, rtol=0)
    with pytest.raises(HsrmError, match="unknown projection"):
        make_head("harp", projection="bogus").fit(X, y, g)
    with pytest.raises(HsrmError, match="unknown pool"):
        make_head("harp", pool="median").fit(X, y, g)


def test_save_load_keeps_the_basis(svd, basis_file, tmp_path):
    X, y, g, _ = _data(svd, n=90)
    h = make_head("harp", basis_file=basis_file, **FAST).fit(X, y, g)
    h.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["architecture"] == "harp" and cfg["layers"] == [4]
    assert cfg["state"]["basis_source"] == basis_file
    # the basis travels with the head: loading needs no SVD file
    params = {**cfg["params"], "basis_file": str(tmp_path / "gone.safetensors")}
    (tmp_path / "h" / "config.json").write_text(json.dumps({**cfg, "params": params}))
    back = Head.load(tmp_path / "h")
    torch.testing.assert_close(back.basis_, h.basis_)
    np.testing.assert_allclose(back.score(X), h.score(X), rtol=1e-5, atol=1e-6)


def test_svd_of_another_model_is_refused(svd, tmp_path):
    X, y, g, _ = _data(svd, n=30)
    other = svd_of(torch.randn(64, D), ModelFingerprint("toy", "rev-other", 4, D, 64))
    p = other.save(tmp_path / "other.safetensors")
    with pytest.raises(HsrmError, match="belongs to"):
        make_head("harp", basis_file=str(p), **FAST).fit(X, y, g)


def test_svd_from_cache_or_clear_error(svd, tmp_path, monkeypatch):
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path))
    X, y, g, _ = _data(svd, n=30)
    with pytest.raises(HsrmError, match="needs the unembedding SVD"):
        make_head("harp", **FAST).fit(X, y, g)
    cache_path(FP).parent.mkdir(parents=True)
    svd.save(cache_path(FP))
    h = make_head("harp", **{**FAST, "epochs": 1}).fit(X, y, g)
    assert h.basis_source_ == "svd cache"
    torch.testing.assert_close(h.basis_, svd.V[:, -2:])


def test_needs_the_last_layer(svd, basis_file):
    X, y, g, _ = _data(svd, n=30)
    X2 = X.select_layers([2])
    with pytest.raises(HsrmError, match="hidden-state index 4"):
        make_head("harp", basis_file=basis_file, **FAST).fit(X2, y, g)
    # another layer on request
    h = make_head("harp", basis_file=basis_file, layer=2, **{**FAST, "epochs": 1}).fit(X2, y, g)
    assert h.required_layers() == (2,)


def test_hallucination_prob_and_max_token(svd, basis_file):
    X, y, g, planted = _data(svd, n=200, one_token=True)
    Xt, yt, _, pt = _data(svd, n=90, seed=1, one_token=True)
    h = make_head("harp", basis_file=basis_file, **FAST).fit(X, y, g)
    p, where = h.hallucination(Xt)
    assert p.shape == (len(Xt),) and ((p >= 0) & (p <= 1)).all()
    assert auroc(p, 1 - yt) > 0.9  # max pooling finds the one bad token
    wrong = yt == 0
    assert (where[wrong] == pt[wrong]).mean() > 0.8
    for i in range(5):
        np.testing.assert_array_equal(where[i], int(h.token_logits(Xt[i][:, 1]).argmax()))
    # score is minus the pooled logit: the same ranking as the probability, reversed
    np.testing.assert_allclose(1 / (1 + np.exp(h.score(Xt))), p, rtol=1e-6)
    # mean pooling dilutes a one-token signal
    m = make_head("harp", basis_file=basis_file, pool="mean", **FAST).fit(X, y, g)
    assert auroc(m.score(Xt), yt) <= auroc(h.score(Xt), yt) + 0.02


def test_empty_answer_scores(svd, basis_file):
    X, y, g, _ = _data(svd, n=30)
    h = make_head("harp", basis_file=basis_file, **{**FAST, "epochs": 1}).fit(X, y, g)
    Xe = TokenFeatures.from_tensors([torch.zeros(0, 2, D), X[0]], LAYERS, FP)
    p, where = h.hallucination(Xe)
    assert where[0] == -1 and p[0] == 0.5 and where[1] >= 0
