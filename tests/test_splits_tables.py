"""The one splitter, the one vote counter, the one table writer, AUROC via scikit-learn."""

import numpy as np
import pytest

from hsrm import metrics as M
from hsrm.errors import HsrmError
from hsrm.report.tables import markdown_table
from hsrm.splits import is_test_prompt, prompt_folds, split_groups


def _auroc_by_ranks(scores, labels):
    """The hand-written AUROC hsrm had before scikit-learn's (Mann-Whitney, ties half)."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auroc_matches_rank_formula_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 4, size=n).astype(float)  # many ties
        y = rng.integers(0, 2, size=n)
        want = _auroc_by_ranks(s, y)
        got = M.auroc(s, y)
        assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want)
    assert M.auroc([1.0, 1.0], [1, 0]) == 0.5  # a tie counts half
    assert np.isnan(M.auroc([0.1, 0.2], [1, 1]))


def test_within_prompt_auroc_same_as_per_group_rank_formula():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 5)
    s = rng.integers(0, 3, size=len(g)).astype(float)
    y = rng.integers(0, 2, size=len(g))
    per = [_auroc_by_ranks(s[g == k], y[g == k]) for k in range(12)]
    want = float(np.mean([v for v in per if not np.isnan(v)]))
    assert M.within_prompt_auroc(s, y, g) == pytest.approx(want)
    assert list(M.by_group(np.array(["b", "a", "b"])).keys()) == ["a", "b"]


def test_split_groups_holds_out_whole_groups_and_clamps():
    g = np.repeat([f"q{i}" for i in range(10)], 3)
    tr, te = split_groups(g, 0.3, seed=2)
    assert not set(g[tr]) & set(g[te]) and (tr ^ te).all() and len(set(g[te])) == 3
    assert (split_groups(g, 0.3, seed=2)[1] == te).all()  # deterministic
    # a tiny share still holds out one group, a huge one keeps one for training
    assert len(set(g[split_groups(g, 0.01)[1]])) == 1
    assert len(set(g[split_groups(g, 0.99)[0]])) == 1
    with pytest.raises(HsrmError, match="at least 2"):
        split_groups(np.array(["a", "a"]), 0.5)
    tr1, va1 = split_groups(np.array(["a", "a"]), 0.5, require_both=False)
    assert tr1.all() and not va1.any()
    with pytest.raises(HsrmError, match="fraction"):
        split_groups(g, 1.5)


def test_split_warns_on_one_class_side(caplog):
    g = np.array(["a", "a", "b", "b"])
    split_groups(g, 0.5, labels=np.array([1, 1, 0, 0]))
    assert "one class" in caplog.text


def test_vote_counts_counts_and_fractions():
    g = np.array(["a", "a", "a", "b", "b"])
    ans = ["4", "4", None, "7", "8"]
    np.testing.assert_allclose(M.vote_counts(ans, g), [2, 2, 0, 1, 1])
    np.testing.assert_allclose(M.vote_counts(ans, g, fraction=True), [2 / 3, 2 / 3, 0, 0.5, 0.5])
    with pytest.raises(HsrmError, match="answers"):
        M.vote_counts(ans[:2], g)


def test_markdown_table():
    t = markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]], align="lr")
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| 1 | x |", "| 2.5 | y |"]
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [[1]])


def test_bon_splitters_pinned():
    """``hsrm train``'s hash split and ``hsrm demo``'s folds, as they were in hsrm.pipeline: heads
    on disk list their training prompts by these, so a changed value would mix train and test."""
    ids = np.array([f"arith-{i:05d}" for i in range(8)] + ["compare-00001", "arith-00002"])
    assert prompt_folds(ids, 3, 0).tolist() == [1, 2, 2, 1, 0, 1, 0, 0, 2, 2]
    assert prompt_folds(ids, 2, 7).tolist() == [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]
    held = [i for i in range(20) if is_test_prompt(f"arith-{i:05d}", 0.3, 0)]
    assert held == [5, 6, 7, 9, 11, 16]
    held = [i for i in range(20) if is_test_prompt(f"q{i}", 0.5, 3)]
    assert held == [1, 2, 4, 6, 8, 9, 12, 13, 14, 16, 17, 19]
