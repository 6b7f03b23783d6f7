import numpy as np
import pytest

from hsrm.baselines.fusion import (
    fuse,
    minmax_fusion,
    minmax_scale,
    rank_fusion,
    vote_counts,
    within_ranks,
)
from hsrm.errors import HsrmError
from hsrm.metrics import per_prompt_bon

G = np.array(["a", "a", "a", "b", "b", "b"])


def test_within_ranks_ties_and_groups():
    r = within_ranks(np.array([0.1, 0.5, 0.5, 10.0, -3.0, 2.0]), G)
    np.testing.assert_allclose(r, [1, 2.5, 2.5, 3, 1, 2])


def test_rank_fusion_is_max_of_ranks():
    s1 = np.array([3.0, 2.0, 1.0, 0.0, 1.0, 2.0])
    s2 = np.array([1.0, 2.0, 3.0, 0.0, 2.0, 1.0])
    f = rank_fusion([s1, s2], G)
    # prompt a: ranks (3,1),(2,2),(1,3) -> max 3,2,3; the tie between 0 and 2 is broken by the mean (equal here)
    assert f[0] > f[1] and f[2] > f[1] and f[0] == pytest.approx(f[2])
    # prompt b: ranks (1,1),(2,3),(3,2): samples 4 and 5 tie on max, sample 3 is last
    assert f[3] < f[4] and f[3] < f[5]
    # invariant to a monotone transform of one scorer
    np.testing.assert_allclose(rank_fusion([np.exp(s1), s2], G), f)


def test_minmax_scale_and_fusion():
    s = np.array([1.0, 3.0, 2.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(minmax_scale(s, G), [0, 1, 0.5, 0.5, 0.5, 0.5])
    a = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    b = np.array([200.0, 100.0, 0.0, 0.0, 1.0, 2.0])
    f = minmax_fusion([a, b], G)
    np.testing.assert_allclose(f, [0.5, 0.5, 0.5, 0, 0.5, 1])
    f2 = minmax_fusion([a, b], G, weights=[3, 1])
    assert f2[2] > f2[0]
    with pytest.raises(HsrmError, match="weights"):
        minmax_fusion([a, b], G, weights=[1])


def test_vote_counts():
    answers = ["4", "4", None, "7", "8", "7"]
    np.testing.assert_allclose(
        vote_counts(answers, G, fraction=True), [2 / 3, 2 / 3, 0, 2 / 3, 1 / 3, 2 / 3]
    )
    np.testing.assert_allclose(vote_counts(answers, G), [2, 2, 0, 2, 1, 2])
    with pytest.raises(HsrmError, match="answers"):
        vote_counts(answers[:3], G)


def test_fusion_of_complementary_scorers_helps_bon():
    # Two noisy scorers, each right on a different half of the prompts; fusion beats either alone.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 8)
    y = (rng.random(len(groups)) < 0.4).astype(int)
    noise = rng.normal(size=(2, len(groups)))
    first_half = groups < 100
    s1 = np.where(first_half, y * 2.0, 0) + noise[0]
    s2 = np.where(~first_half, y * 2.0, 0) + noise[1]

    def bon(s):
        return np.mean(list(per_prompt_bon(s, y, groups, k=8).values()))

    for rule in ("rank", "minmax"):
        assert bon(fuse(rule, [s1, s2], groups)) > max(bon(s1), bon(s2))


def test_bad_input():
    with pytest.raises(HsrmError, match="shape"):
        rank_fusion([np.zeros(5)], G)
    with pytest.raises(HsrmError, match="non-finite"):
        minmax_fusion([np.array([np.nan] * 6)], G)
    with pytest.raises(HsrmError, match="unknown fusion"):
        fuse("mean", [np.zeros(6)], G)
