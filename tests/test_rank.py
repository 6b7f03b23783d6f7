"""Within-prompt ranking probes, the second stage, and the registered ``rank`` head."""

import numpy as np
import pytest
import torch

from hsrm import metrics as M
from hsrm.bon.rank import RankProbe, SecondStage, bon_all, concat_tables, group_matrix, rank_loss
from hsrm.heads import make_head
from tests.conftest import make_features


def _pooled(n_prompts=60, per=8, d=12, offset=3.0, seed=0):
    """Pooled states where a prompt-level direction says how easy the prompt is (a shortcut a
    pointwise fit uses) and another direction orders the answers within a prompt."""
    rng = np.random.default_rng(seed)
    P, y, g = [], [], []
    for p in range(n_prompts):
        easy = rng.random()
        base = rng.normal(size=(1, d))
        base[0, 0] = offset * easy  # difficulty, shared by the prompt's answers
        for _ in range(per):
            yi = int(rng.random() < 0.2 + 0.6 * easy)
            x = base + rng.normal(size=(1, d))
            x[0, 1] += 1.5 if yi else -1.5  # the within-prompt signal
            P.append(x)
            y.append(yi)
            g.append(f"p{p}")
    return np.stack(P).astype(np.float32), np.array(y), np.array(g)  # (n, 1, d)


@pytest.mark.parametrize("loss", ["pairwise", "listwise", "pointwise"])
def test_rank_probe_orders_answers_on_new_prompts(loss):
    P, y, g = _pooled(seed=0)
    Pt, yt, gt = _pooled(seed=1)
    h = RankProbe("all", loss, l2=1e-3, epochs=150, lr=1e-2).fit(P, y, g)
    s = h.score(Pt)
    assert M.within_prompt_auroc(s, yt, gt) > 0.85
    assert bon_all(s, yt, gt) > bon_all(np.zeros(len(yt)), yt, gt) + 0.1


def test_ranking_losses_ignore_the_prompt_offset():
    P, y, g = _pooled(seed=0)
    pw = RankProbe("all", "pairwise", l2=1e-3, epochs=150, lr=1e-2).fit(P, y, g)
    pt = RankProbe("all", "pointwise", l2=1e-3, epochs=150, lr=1e-2).fit(P, y, g)
    # weight on the difficulty feature relative to the within-prompt one
    ratio = lambda h: abs(float(h.w_[0])) / abs(float(h.w_[1]))  # noqa: E731
    assert ratio(pw) < 0.5 * ratio(pt)


def test_rank_loss_values():
    s = torch.tensor([2.0, 0.0, 1.0, 1.0])
    y = torch.tensor([1, 0, 0, 1])
    gm = group_matrix([np.array([0, 1]), np.array([2, 3])])
    # pairwise: prompt 0 softplus(0-2), prompt 1 softplus(1-1)
    want = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    assert float(rank_loss(s, y, gm, "pairwise")) == pytest.approx(want, rel=1e-5)
    # listwise: prompt 0 -log softmax(2 | 2, 0), prompt 1 -log(1/2)
    want = (np.log(np.exp(2) + 1) - 2 + np.log(2.0)) / 2
    assert float(rank_loss(s, y, gm, "listwise")) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="loss"):
        RankProbe(loss="hinge")


def test_early_stopping_keeps_the_best_val_epoch():
    P, y, g = _pooled(seed=0)
    Pv, yv, gv = _pooled(seed=2)
    h = RankProbe("all", "pairwise", epochs=40, lr=1e-2).fit(P, y, g, val=(Pv, yv, gv))
    best = max(a for _, a in h.history_)
    assert M.within_prompt_auroc(h.score(Pv), yv, gv) == pytest.approx(best)
    assert h.best_epoch_ in [e for e, _ in h.history_]


def test_second_stage_learns_which_score_ranks():
    rng = np.random.default_rng(0)
    n, per = 80, 8
    g = np.repeat([f"p{i}" for i in range(n)], per)
    y = (rng.random(n * per) < 0.4).astype(int)
    t = {
        "g": g,
        "y": y,
        "vote_share": rng.random(n * per),
        "mean_logprob": rng.normal(size=n * per),
        "deepconf_lowest_group": rng.normal(size=n * per),
    }
    head = y + rng.normal(scale=0.7, size=n * per)  # the only informative score
    for loss in ("pairwise", "pointwise"):
        s2 = SecondStage(loss=loss).fit(t, head)
        coef = s2.clf_.coef_[0]
        assert abs(coef[0]) > 3 * np.abs(coef[1:4]).max()
        assert M.within_prompt_auroc(s2.score(t, head), y, g) > 0.8


def test_concat_tables_keeps_stores_apart():
    a = {"g": np.array(["p0", "p0"]), "y": np.array([1, 0]), "extracted": ["1", "2"]}
    b = {"g": np.array(["p0"]), "y": np.array([1]), "extracted": ["3"]}
    t = concat_tables(a, b, tags=["x", "y"])
    assert t["g"].tolist() == ["x/p0", "x/p0", "y/p0"]
    assert t["extracted"] == ["1", "2", "3"] and t["y"].tolist() == [1, 0, 1]


def test_rank_head_fits_saves_and_loads(tmp_path):
    X, y, g = make_features(seed=0)
    Xt, yt, gt = make_features(seed=1)
    h = make_head("rank", epochs=100, lr=1e-2).fit(X, y, g)
    s = h.score(Xt)
    assert M.within_prompt_auroc(s, yt, gt) > 0.8
    h.save(tmp_path / "h")
    from hsrm.heads import Head

    h2 = Head.load(tmp_path / "h")
    np.testing.assert_allclose(h2.score(Xt), s, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="groups"):
        make_head("rank").fit(X, y)


def test_concat_features_dispatches_to_each_store():
    from hsrm.bon.rank import concat_features
    from hsrm.errors import HsrmError
    from tests.conftest import FP

    class Fake:
        def __init__(self, n, base, layers=(0, 1), fp=FP):
            self.n, self.base, self.layers, self.fingerprint, self.path = n, base, layers, fp, "f"
            self.records = [{"prompt_id": f"p{base + i}", "label": 0} for i in range(n)]

        def __len__(self):
            return self.n

        def hidden(self, i):
            return torch.full((2, len(self.layers), 16), float(self.base + i))

        def logprobs(self, i):
            return torch.zeros(2)

    X = concat_features([Fake(3, 0), Fake(2, 100)])
    assert len(X) == 5
    assert [float(X[i][0, 0, 0]) for i in range(5)] == [0, 1, 2, 100, 101]
    with pytest.raises(HsrmError, match="other model or layers"):
        concat_features([Fake(1, 0), Fake(1, 0, layers=(0,))])
