"""Metrics against brute force and scikit-learn."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hsrm import metrics as M
from hsrm.bon.report import bon_report


def _brute_bon(s, y, k, rng):
    vals = []
    for sub in itertools.combinations(range(len(s)), k):
        sub = np.array(sub)
        best = s[sub].max()
        vals.append(y[sub][s[sub] == best].mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("seed", range(5))
def test_bon_exact_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, size=8).astype(float)  # many ties
    y = rng.integers(0, 2, size=8)
    for k in (1, 2, 3, 8):
        assert M.bon_prompt(s, y, k) == pytest.approx(_brute_bon(s, y, k, rng))


def test_pass_at_k():
    assert M.pass_at_k(16, 0, 4) == 0.0
    assert M.pass_at_k(16, 16, 1) == 1.0
    assert M.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # bon of a perfect scorer is pass@k
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    assert M.bon_prompt(y.astype(float), y, 3) == pytest.approx(M.pass_at_k(8, 2, 3))


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=200).round(1), rng.integers(0, 2, 200)
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(M.auroc(s, np.ones(200)))


def test_within_prompt_auroc_ignores_between_prompt_shift():
    # a score that only tracks prompt difficulty has global AUROC > 0.5 but within-prompt 0.5
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([1, 1, 1, 1, 0, 0, 0, 0], float)
    assert M.auroc(s, y) > 0.7
    assert M.within_prompt_auroc(s, y, g) == pytest.approx(0.5)


def test_majority_vote():
    rng = np.random.default_rng(0)
    ans = ["7", "7", "7", "5", None]
    y = np.array([1, 1, 1, 0, 0])
    assert M.majority_prompt(ans, y, 5, rng) == 1.0
    assert 0.5 < M.majority_prompt(ans, y, 3, rng) <= 1.0


def test_bootstrap_ci_contains_mean():
    v = np.random.default_rng(1).random(100)
    lo, hi = M.bootstrap_ci(v)
    assert lo < v.mean() < hi


def test_bon_report_keys_and_controls():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(20), 8)
    y = rng.integers(0, 2, len(g))
    ext = [str(v) for v in rng.integers(0, 3, len(g))]
    rep = bon_report(
        {
            "oracle_like": y + rng.normal(0, 0.01, len(g)),
            "random": np.zeros(len(g)),
            "majority": np.zeros(len(g)),
        },
        y,
        g,
        extracted=ext,
        families=np.where(g < 10, "a", "b"),
        n_boot=100,
    )
    for key in (
        "mean_accuracy",
        "pass_at_k",
        "bon",
        "bon_ci",
        "auroc",
        "within_prompt_auroc",
        "gap_closed",
        "per_family",
    ):
        assert key in rep
    assert rep["bon"]["oracle_like"]["8"] == pytest.approx(rep["pass_at_k"]["8"])
    assert rep["bon"]["random"]["8"] == pytest.approx(rep["mean_accuracy"])
    assert rep["gap_closed"]["oracle_like"]["8"] == pytest.approx(1.0)
    assert set(rep["per_family"]) == {"a", "b"}
    # paired against majority at the largest k: the difference of the two BoNs, with a CI
    vm = rep["vs_majority"]
    assert vm["k"] == 8 and vm["majority"]["delta"] == 0.0
    d = vm["oracle_like"]
    assert d["delta"] == pytest.approx(rep["bon"]["oracle_like"]["8"] - rep["bon"]["majority"]["8"])
    assert d["delta"] > 0 and d["ci"][0] <= d["delta"] <= d["ci"][1]
    assert vm["random"]["delta"] == pytest.approx(
        rep["bon"]["random"]["8"] - rep["bon"]["majority"]["8"]
    )
    assert rep["per_family"]["a"]["vs_majority"]["oracle_like"]["delta"] > 0
    assert "vs_majority" not in bon_report({"s": y}, y, g, n_boot=10)
    # results.md (and results.html) carry it as a column of every table
    from hsrm.report.bon import bon_markdown

    md = bon_markdown(rep)
    assert md.count("| vs majority @8, paired [95% CI] |") == 3  # all, family a, family b
    assert f"| {d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |" in md


def test_first_k_protocol():
    g = np.repeat([0, 1], 4)
    y = np.array([0, 1, 1, 1, 1, 0, 0, 0])
    s = np.array([0.0, 1, 2, 3, 0, 1, 2, 3])
    rep = bon_report(
        {"s": s, "majority": s},
        y,
        g,
        extracted=list("abbbaccc"),
        ks=[1, 2],
        protocol="first",
        n_boot=20,
    )
    # first-1 = sample 0 of each prompt; first-2 picks the higher of samples 0 and 1
    assert rep["bon"]["s"]["1"] == pytest.approx(0.5)
    assert rep["bon"]["s"]["2"] == pytest.approx(0.5)
    with pytest.raises(Exception, match="protocol"):
        bon_report({"s": s}, y, g, protocol="bogus")


def _vote_reference(answers, y, w, keep):
    """One subset, plainly: keep the heaviest ceil(keep*k), sum weights per answer, split ties."""
    k = len(answers)
    m = max(1, int(np.ceil(keep * k - 1e-9)))
    order = sorted(range(k), key=lambda i: -w[i])[:m]
    tot: dict = {}
    for i in order:
        if answers[i] is not None:
            tot[answers[i]] = tot.get(answers[i], 0.0) + w[i]
    if not tot:
        return float(np.mean([y[i] for i in order]))
    best = max(tot.values())
    wins = [a for a, v in tot.items() if v >= best - 1e-12]
    return float(np.mean([y[answers.index(a)] for a in wins]))


def test_vote_prompt_matches_enumeration_of_subsets():
    from itertools import combinations

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(3, 8))
        ans = [None if rng.random() < 0.2 else int(rng.integers(0, 3)) for _ in range(n)]
        grade = {a: float(rng.random() < 0.5) for a in range(3)}
        y = np.array([grade[a] if a is not None else 0.0 for a in ans])
        w = rng.random(n).round(1)
        for k, keep in ((n, 1.0), (n, 0.5), (2, 1.0), (3, 0.6)):
            exact = np.mean(
                [
                    _vote_reference([ans[i] for i in s], y[list(s)], w[list(s)], keep)
                    for s in combinations(range(n), k)
                ]
            )
            got = M.vote_prompt(ans, y, w, k, np.random.default_rng(0), keep, n_sub=8000)
            tol = 1e-12 if k == n else 0.03
            assert abs(got - exact) <= tol, (ans, y, w, k, keep, got, exact)


def test_temperature_zero_vote_is_best_of_k_and_softmax_vote_interpolates():
    from hsrm.metrics import bon_prompt, score_vote_weights, vote_prompt, zscore_by_prompt

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 8)
    s = np.round(rng.normal(size=len(groups)), 1)  # rounded: ties occur
    y = rng.random(len(groups)) < 0.4
    ex = [str(i) for i in range(len(groups))]  # distinct answers: a vote ranks single traces
    w0 = score_vote_weights(s, groups, 0.0)
    for g in range(30):
        i = np.flatnonzero(groups == g)
        got = vote_prompt([ex[j] for j in i], y[i], w0[i], 8, rng)
        assert abs(got - bon_prompt(s[i], y[i], 8)) < 1e-12
    # temperature 1: weights are the exp of within-prompt z-scores
    z = zscore_by_prompt(s, groups)
    assert np.allclose(score_vote_weights(s, groups), np.exp(z))
    assert np.allclose([z[groups == g].mean() for g in range(30)], 0)
    # with shared answers, a high temperature is plain majority vote
    shared = ["a", "a", "a", "b", "b", "c", "c", "d"]
    yy = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    ss = np.array([0.0, 0.1, 0.2, 5.0, 4.0, 0.0, 0.0, 0.1])
    hot = score_vote_weights(ss, np.zeros(8), 100.0)
    assert vote_prompt(shared, yy, hot, 8, rng) == 1.0  # "a": 3 votes
    assert vote_prompt(shared, yy, score_vote_weights(ss, np.zeros(8), 0.0), 8, rng) == 0.0


def test_vectorised_per_prompt_metrics_equal_the_scalar_ones():
    """Reports compute within-prompt AUROC, best-of-k and the pooled AUROC's bootstrap CI for all
    prompts (or resamples) at once; each must equal the per-prompt / per-resample reference, on
    prompts of unequal sizes and with tied scores."""
    rng = np.random.default_rng(1)
    for trial in range(12):
        sizes = rng.integers(1, 12, rng.integers(2, 30))
        g = np.concatenate([[f"p{j}"] * n for j, n in enumerate(sizes)])
        rng.shuffle(g)
        s = rng.integers(0, 4, len(g)).astype(float) if trial % 2 else rng.random(len(g))
        y = rng.random(len(g)) < 0.4
        by = M.by_group(g)
        got = M.within_prompt_auroc_per_group(s, y, g)
        want = {k: M.auroc(s[i], y[i]) for k, i in by.items()}
        assert list(got) == list(want)
        np.testing.assert_array_equal(list(got.values()), list(want.values()))
        k = int(sizes.min())
        got_bon = M.per_prompt_bon(s, y, g, k)
        want_bon = [M.bon_prompt(s[i], y[i], k) for i in by.values()]
        np.testing.assert_allclose(list(got_bon.values()), want_bon, rtol=0, atol=1e-12)
        got_ci = M.bootstrap_auroc_ci(s, y, g, n_boot=50, seed=trial)
        want_ci = M.bootstrap_metric_ci(
            lambda idx, s=s, y=y: M.auroc(s[idx], y[idx]), g, n_boot=50, seed=trial
        )
        np.testing.assert_array_equal(got_ci, want_ci)
