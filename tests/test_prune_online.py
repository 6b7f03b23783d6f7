"""``hsrm sample --prune``: online pruning policies wired to the sampler's per-step hook."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from hsrm.bon.prefix_head import fit_prefix_head
from hsrm.capture.prune import PrefixHead, prune_hook
from hsrm.cli import main
from hsrm.engines import sample
from hsrm.errors import HsrmError
from hsrm.sampling import SampleRunConfig
from hsrm.store import Store


def _cfg(tmp_path: Path, name: str, **kw) -> SampleRunConfig:
    base = dict(
        out=str(tmp_path / name),
        model="tiny:0",
        n_prompts=3,
        n=8,
        max_new_tokens=8,
        temperature=1.0,
        shard_prompts=3,
        threads=1,
    )
    return SampleRunConfig(**{**base, **kw})


def _by_prompt(st: Store) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in st.records:
        out.setdefault(r["prompt_id"], []).append(r)
    return out


def test_random_pruning_stops_rows_and_marks_them(tmp_path, tiny_lm):
    kw = dict(prune="random", prune_checkpoints="2,4", prune_frac=0.5)
    st = sample(_cfg(tmp_path, "r", **kw), lm=tiny_lm)
    assert st.meta["sampling"]["prune"]["policy"] == "random"
    full = sample(_cfg(tmp_path, "f"), lm=tiny_lm)
    assert all(r["stop"] != "pruned" for r in full.records)
    n_pruned = 0
    for recs in _by_prompt(st).values():
        pr = [r for r in recs if r["stop"] == "pruned"]
        n_pruned += len(pr)
        assert all(r["n_tokens"] in (2, 4) for r in pr)
        assert any(r["stop"] != "pruned" for r in recs)  # a prompt always keeps one sample
        # 8 running -> 4 stopped at token 2, then half of the <= 4 left at token 4
        assert sum(r["n_tokens"] == 2 for r in pr) <= 4
    assert n_pruned >= 3
    gen = sum(r["n_tokens"] for r in st.records)
    assert gen < sum(r["n_tokens"] for r in full.records)


def test_random_pruning_draws_per_prompt_whatever_the_batch(tmp_path, tiny_lm):
    """Random pruning seeds one stream per prompt: batching prompts 1, 2 or 3 at a time (the
    local engine's windows, a Ray worker's shard, a resume) stops the same samples."""
    kw = dict(prune="random", prune_checkpoints="2,4")
    stores = [
        sample(_cfg(tmp_path, f"b{b}", batch_prompts=b, shard_prompts=1, **kw), lm=tiny_lm)
        for b in (1, 2, 3)
    ]
    stops = [[(r["prompt_id"], r["stop"], r["n_tokens"]) for r in st.records] for st in stores]
    assert stops[0] == stops[1] == stops[2]
    assert any(s == "pruned" for _, s, _ in stops[0])
    other = sample(_cfg(tmp_path, "seed1", prune_seed=1, **kw), lm=tiny_lm)
    assert [(r["stop"], r["n_tokens"]) for r in other.records] != [s[1:] for s in stops[0]]


def test_head_pruning_stops_the_lowest_scored(tmp_path, tiny_lm):
    fp = tiny_lm.fingerprint
    layers = list(range(fp.n_layers + 1))
    D = len(layers) * fp.hidden_size
    rng = np.random.default_rng(0)
    head = PrefixHead(
        [3], layers, np.zeros((1, D)), np.ones((1, D)), rng.normal(size=(1, D)), np.zeros(1),
        {"name": fp.name, "n_layers": fp.n_layers, "hidden_size": fp.hidden_size},
    )  # fmt: skip
    head.save(tmp_path / "ph")
    cfg = _cfg(tmp_path, "h", prune="head", prune_head=str(tmp_path / "ph"), prune_checkpoints="3")
    st = sample(cfg, lm=tiny_lm)
    loaded = PrefixHead.load(tmp_path / "ph")
    import torch

    n_pruned = 0
    for recs in _by_prompt(st).values():
        idx = [st.records.index(r) for r in recs if r["n_tokens"] >= 3]
        s = {
            i: float(loaded.score(3, st.hidden(i)[:3].mean(0, keepdim=True).to(torch.float32))[0])
            for i in idx
        }
        cut = [i for i in idx if st.records[i]["stop"] == "pruned"]
        kept = [i for i in idx if st.records[i]["stop"] != "pruned"]
        n_pruned += len(cut)
        if cut and kept:
            assert max(s[i] for i in cut) <= min(s[i] for i in kept) + 1e-4
        assert all(st.records[i]["n_tokens"] == 3 for i in cut)
    assert n_pruned >= 3


def test_deepconf_pruning_keeps_the_warmup(tmp_path, tiny_lm):
    cfg = _cfg(tmp_path, "d", prune="deepconf", prune_warmup=3, prune_window=2, prune_eta=50.0)
    st = sample(cfg, lm=tiny_lm)
    pr = [r for r in st.records if r["stop"] == "pruned"]
    assert pr  # eta 50: the median of the warm-up cuts some of the other samples
    assert all(r["sample"] >= 3 and r["n_tokens"] >= 2 for r in pr)


def test_fit_prefix_head_refuses_one_class(tmp_path, tiny_lm):
    st = sample(_cfg(tmp_path, "s"), lm=tiny_lm)
    if len(np.unique(st.labels)) == 2:
        h = fit_prefix_head(st, checkpoints=(2,))
        assert h.coef.shape == (1, len(st.layers) * st.fingerprint.hidden_size)
    else:
        with pytest.raises(HsrmError, match="all right or all wrong"):
            fit_prefix_head(st, checkpoints=(2,))


def test_hook_checks_its_options():
    with pytest.raises(HsrmError, match="unknown policy"):
        prune_hook("worst", 8)
    with pytest.raises(HsrmError, match="prefix head"):
        prune_hook("head", 8)
    with pytest.raises(HsrmError, match="prune_frac"):
        prune_hook("random", 8, frac=1.5)
    with pytest.raises(HsrmError, match="increasing"):
        prune_hook("random", 8, checkpoints="8,4")
    with pytest.raises(HsrmError, match="prune_warmup"):
        prune_hook("deepconf", 8, warmup=8)
    with pytest.raises(HsrmError, match="prune_tau"):
        prune_hook("consensus", 8, tau=1.5, extract=lambda t, p: t)
    with pytest.raises(HsrmError, match="answer extraction"):
        prune_hook("consensus", 8)
    assert prune_hook("none", 8) is None


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--prune", "worst"], "unknown policy"),
        (["--prune", "head"], "prune_head"),
        (["--prune", "head", "--prune-head", "nowhere"], "not a prefix head folder"),
        (["--prune", "random", "--prune-frac", "1.5"], "prune_frac"),
        (["--prune", "random", "--prune-checkpoints", "a,b"], "prune_checkpoints"),
        (["--prune", "deepconf", "--prune-head", "x"], "only used with prune=head"),
        (["--prune", "consensus", "--prune-tau", "0"], "prune_tau"),
        (["--prune", "consensus", "--prune-warmup", "16"], "prune_warmup"),
    ],
)
def test_bad_prune_options_exit_2(tmp_path, capsys, args, msg):
    out = tmp_path / "x"
    assert main(["sample", "--out", str(out), "--model", "tiny:0", *args]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_prune_from_config_file(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"prune": "random", "prune_frac": 2.0}))
    out = tmp_path / "x"
    assert main(["sample", "--config", str(cfg), "--out", str(out), "--model", "tiny:0"]) == 2
    assert "prune_frac" in capsys.readouterr().err
    assert not out.exists()


def test_head_selectors_pick_and_vote():
    from hsrm.bon.prune import select

    rng = np.random.default_rng(0)
    ans = ["3", "3", "5", "7"]
    y = np.array([0.0, 0.0, 1.0, 0.0])
    s = {"head": np.array([-1.0, -1.0, 2.0, -3.0])}
    assert select("head", ans, y, s, rng) == 1.0  # the top logit
    # sigmoid weights: "3" gets 2 x 0.27 = 0.54 < 0.88 for "5"; softmax: 2 x 0.047 < 0.95
    assert select("head_pvote", ans, y, s, rng) == 1.0
    assert select("head_softmax_vote", ans, y, s, rng) == 1.0
    s2 = {"head": np.array([0.0, 0.0, 0.5, -3.0])}  # 2 x 0.5 > 0.62: the pair wins the vote
    assert select("head_pvote", ans, y, s2, rng) == 0.0
    assert select("head", ans, y, s2, rng) == 1.0
    # the reports' head vote, exp(z): z = (1.02, 1.02... ) -> the pair outweighs the top sample
    s3 = {"head": np.array([1.0, 1.0, 1.2, -3.0])}
    assert select("head_vote", ans, y, s3, rng) == 0.0
    assert select("head", ans, y, s3, rng) == 1.0


def test_task_range_and_shots_reach_the_synthetic_task(tmp_path, capsys):
    import re

    from hsrm.sampling import make_task

    cfg = SampleRunConfig(task="synthetic:cot", n_prompts=12, task_range="1,4", shots=5)
    for p in make_task(cfg).prompts():
        assert len(p.messages) == 2 * 5 + 1
        q = p.messages[-1]["content"]
        assert all(1 <= int(x) <= 4 for x in re.findall(r"\d+", q)), q
    out = tmp_path / "x"
    assert main(["sample", "--out", str(out), "--model", "tiny:0", "--task-range", "5,1"]) == 2
    assert "task_range" in capsys.readouterr().err
    assert not out.exists()


def test_prune_head_command_fits_and_saves(tmp_path, tiny_lm, capsys, monkeypatch):
    from hsrm.tasks.synthetic import SyntheticTask

    # "right" = no number in the answer: the tiny random model gives both classes
    monkeypatch.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)
    st = sample(_cfg(tmp_path, "s", layers="every:1"), lm=tiny_lm)
    out = tmp_path / "h"
    args = ["prune-head", "--store", str(st.path), "--out", str(out), "--checkpoints", "2,3"]
    assert len(np.unique(st.labels)) == 2
    assert main(args) == 0, capsys.readouterr().err
    h = PrefixHead.load(out)
    assert h.checkpoints == [2, 3] and h.layers == list(st.layers)
    # the out-of-fold diagnostics are saved with the head and printed
    assert [d["checkpoint"] for d in h.diagnostics] == [2, 3]
    for d in h.diagnostics:
        assert 0 <= d["tied"] <= 1 and 0.5 <= d["auroc_ceiling"] <= 1
        assert d["auroc"] is None or 0 <= d["auroc"] <= 1
    assert "checkpoint 2: out-of-fold within-prompt AUROC" in capsys.readouterr().out
    bad = [
        "prune-head",
        "--store",
        str(st.path),
        "--out",
        str(tmp_path / "b"),
        "--checkpoints",
        "3,2",
    ]
    assert main(bad) == 2
    assert "increasing" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["prune-head", "--store", str(tmp_path / "none"), "--out", str(out)]) == 2
    # a folder it did not make, and the store itself, are refused and left as they were
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    capsys.readouterr()
    for target in (foreign, st.path):
        before = sorted(p.name for p in Path(target).iterdir())
        assert main(["prune-head", "--store", str(st.path), "--out", str(target)]) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert sorted(p.name for p in Path(target).iterdir()) == before
    assert (foreign / "notes.txt").read_text() == "keep"
    # its own earlier output is replaced
    assert main(args) == 0 and PrefixHead.load(out).checkpoints == [2, 3]


def test_threshold_stops_keep_min_and_stop_worst_first():
    from hsrm.bon.prune import head_stops, threshold_stops

    lens = np.array([10, 10, 10, 10, 10, 3])
    sc = {4: np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.0]), 8: np.array([0.5, 0.9, 0.1, 0.1, 0.8, 0])}
    # at 4: 0.1, 0.2, 0.3 are below 0.35 (the 3-token sample has finished); min_keep=3 of the
    # 6 running leaves room for all three; at 8 nothing may stop (3 running)
    stop, counts = threshold_stops(lens, sc, [4, 8], [0.35, 0.95], 3)
    assert stop.tolist() == [4, 10, 4, 4, 10, 3] and counts == [3, 0]
    # min_keep=4: only the two worst stop at 4; at 8, sample 3 (0.1 < 0.95) would stop, but the
    # finished 3-token sample counts as kept, so 4 are left and none may
    stop, counts = threshold_stops(lens, sc, [4, 8], [0.35, 0.95], 4)
    assert stop.tolist() == [4, 10, 4, 10, 10, 3] and counts == [2, 0]
    stop, counts = threshold_stops(lens, sc, [8], [0.95], 3)  # 0.1, 0.1, 0.5 stop; 3 are left
    assert stop.tolist() == [8, 10, 8, 8, 10, 3] and counts == [3]
    # nothing below the threshold: nothing stops, unlike a fixed share
    stop, counts = threshold_stops(lens, sc, [4], [0.0], 1)
    assert stop.tolist() == lens.tolist() and counts == [0]
    assert head_stops(lens, sc, [4], 0.5)[1] == [2]


def test_pruning_curve_replays_threshold_and_random_at_its_budget(tmp_path, tiny_lm):
    from hsrm.bon.prune import pruning_curve

    st = sample(_cfg(tmp_path, "c", n_prompts=4), lm=tiny_lm)
    idx = np.arange(len(st))
    lens = np.array([r["n_tokens"] for r in st.records])
    pref = {2: np.random.default_rng(0).normal(size=len(st))}
    c = pruning_curve(
        st, idx, pref, head_settings=(((2,), 0.5),), deepconf_settings=(),
        threshold_settings=(((2,), (0.0,), 2),), random_repeats=3,
    )  # fmt: skip
    pts = {p["policy"]: p for p in c["points"]}
    assert pts["none"]["tokens"] == int(lens.sum())
    thr = next(p for p in c["points"] if p["family"] == "hsrm head, threshold")
    rnd = pts[f"random, same budget as {thr['policy']}"]
    # the threshold stops exactly the samples below 0 at token 2 (while 2 per prompt run) ...
    expect, lo, hi = 0, 0, 0
    for p in np.unique(st.prompt_ids):
        rows = np.flatnonzero(st.prompt_ids == p)
        live = rows[lens[rows] > 2]
        low = live[pref[2][live] < 0]
        k = min(len(low), len(rows) - 2)
        cut = low[np.argsort(pref[2][low])[:k]]
        expect += int(lens[rows].sum() - (lens[cut] - 2).sum())
        # random pruning stops k of the live samples at token 2: it saves between the k shortest
        # and the k longest of them
        saved = np.sort(lens[live] - 2)
        lo += int(lens[rows].sum() - saved[len(saved) - k :].sum())
        hi += int(lens[rows].sum() - saved[:k].sum())
    assert thr["tokens"] == expect < pts["none"]["tokens"]
    assert lo <= rnd["tokens"] <= hi < pts["none"]["tokens"]
    assert set(thr["bon"]) == {"majority", "mean_logprob", "deepconf_vote"}


def test_prefix_ties_bound_every_prefix_score():
    from hsrm import metrics as M
    from hsrm.bon.prune import prefix_ties

    # one prompt: right, wrong, right, wrong; they share token 1, then split in pairs at token 2
    ids = [[1, 2, 3], [1, 2, 4], [1, 5, 6], [1, 5, 7]]
    y, g = np.array([1, 0, 1, 0]), np.array(["p"] * 4)
    assert prefix_ties(ids, y, g, 1) == {"tied": 1.0, "auroc_ceiling": 0.5}
    assert prefix_ties(ids, y, g, 2) == {"tied": 0.5, "auroc_ceiling": 0.75}
    assert prefix_ties(ids, y, g, 3) == {"tied": 0.0, "auroc_ceiling": 1.0}
    # a prompt with one class has no pairs and is left out, as within_prompt_auroc leaves it
    ids2 = ids + [[9], [9, 9]]
    y2, g2 = np.concatenate([y, [1, 1]]), np.array(["p"] * 4 + ["q"] * 2)
    assert prefix_ties(ids2, y2, g2, 2) == {"tied": 0.5, "auroc_ceiling": 0.75}
    # random stores: any score that is a function of the first t tokens stays under the ceiling,
    # and the label itself (not a prefix function) can exceed it
    rng = np.random.default_rng(0)
    for t in (1, 2, 3):
        ids3 = [list(rng.integers(0, 2, 4)) for _ in range(64)]
        y3, g3 = rng.integers(0, 2, 64), np.repeat(np.arange(8), 8)
        c = prefix_ties(ids3, y3, g3, t)
        f = {}
        s = np.array([f.setdefault(tuple(x[:t]), rng.normal()) for x in ids3])
        best = np.array([np.mean([y3[j] for j in range(64) if g3[j] == g3[i]
                                  and tuple(ids3[j][:t]) == tuple(ids3[i][:t])])
                         for i in range(64)])  # fmt: skip
        assert M.within_prompt_auroc(s, y3, g3) <= c["auroc_ceiling"] + 1e-12
        assert M.within_prompt_auroc(best, y3, g3) <= c["auroc_ceiling"] + 1e-12
        if c["tied"] > 0:
            assert M.within_prompt_auroc(y3.astype(float), y3, g3) > c["auroc_ceiling"]


def _inputs(tmp_path, tiny_lm, **kw):
    from hsrm.capture import parse_layers
    from hsrm.sampling import sample_inputs

    scfg, _, prompts = sample_inputs(_cfg(tmp_path, "in", **kw))
    return scfg, prompts, parse_layers(scfg.layers, tiny_lm.fingerprint.n_layers)


@pytest.mark.parametrize("batch_prompts", [0, 2])
def test_consensus_draws_waves_equal_to_one_draw(tmp_path, tiny_lm, batch_prompts):
    """Samples drawn in two waves (``streams``) are the unpruned run's, token for token; a prompt
    whose warm-up answers agree (here: same first character) gets no more samples."""
    from hsrm.capture import sample_prompts
    from hsrm.capture.prune import has_consensus
    from hsrm.capture.windows import sample_batch

    scfg, prompts, layers = _inputs(tmp_path, tiny_lm, n_prompts=6)
    full = sample_prompts(tiny_lm, prompts, scfg, layers, batch_prompts=batch_prompts)
    first_char = lambda text, prompt: text[:1] or None  # noqa: E731
    stop = prune_hook("consensus", scfg.n, warmup=2, tau=1.0, extract=first_char)
    waves = sample_batch(tiny_lm, prompts, scfg, layers, batch_prompts, stop)
    stopped = 0
    for f, w in zip(full, waves, strict=True):
        assert len(w.answers) == scfg.n
        agree = has_consensus([first_char(a.text, None) for a in f.answers[:2]], 1.0)
        stopped += agree
        for j, (a, b) in enumerate(zip(f.answers, w.answers)):
            if agree and j >= 2:
                assert b.token_ids == [] and b.extra["stop"] == "pruned"
                assert b.hidden is not None and b.hidden.shape == (0, *a.hidden.shape[1:])
            else:
                assert b.token_ids == a.token_ids
                assert np.allclose(b.logprobs.numpy(), a.logprobs.numpy(), atol=1e-5)
    assert 0 < stopped < len(prompts)  # both branches were taken
    never = prune_hook("consensus", scfg.n, warmup=2, tau=1.0, extract=lambda t, p: None)
    again = sample_batch(tiny_lm, prompts, scfg, layers, batch_prompts, never)
    assert [[a.token_ids for a in r.answers] for r in again] == [
        [a.token_ids for a in r.answers] for r in full
    ]


def test_consensus_store_matches_its_replay(tmp_path, tiny_lm, monkeypatch):
    """``hsrm sample --prune consensus`` writes every sample the replay over the unpruned store
    (``pruning_curve(consensus_settings=...)``) says it draws, and the same number of tokens."""
    from hsrm.bon.prune import pruning_curve
    from hsrm.tasks.synthetic import SyntheticTask

    # the random model never writes a number; grade (and vote on) its first character instead
    monkeypatch.setattr(SyntheticTask, "extract", lambda self, text, prompt: text[:1] or None)

    kw = dict(n_prompts=6, temperature=1.0)
    full = sample(_cfg(tmp_path, "full", **kw), lm=tiny_lm)
    st = sample(_cfg(tmp_path, "cons", prune="consensus", prune_warmup=2, prune_tau=1.0, **kw),
                lm=tiny_lm)  # fmt: skip
    assert st.meta["sampling"]["prune"] == {"policy": "consensus", "warmup": 2, "tau": 1.0}
    assert st.meta["refill_window"] == 8 * 4  # batch_prompts x n / warmup: full first waves
    assert "refill_window" not in full.meta
    c = pruning_curve(full, np.arange(len(full)), {}, head_settings=(), deepconf_settings=(),
                      consensus_settings=((2, 1.0),), random_repeats=2)  # fmt: skip
    pts = {p["policy"]: p for p in c["points"]}
    cons = pts["consensus warmup=2 tau=1"]
    assert sum(r["n_tokens"] for r in st.records) == cons["tokens"]
    empty = [r for r in st.records if r["n_tokens"] == 0]
    assert all(r["stop"] == "pruned" and r["sample"] >= 2 for r in empty)
    assert 0 < cons["prompts_stopped"] < 6
    assert len(empty) == 6 * cons["prompts_stopped"]  # 8 - 2 samples of each stopped prompt
    for a, b in zip(full.records, st.records, strict=True):
        if b["n_tokens"]:
            assert a["text"] == b["text"]
    # the control stops as many prompts after their warm-up, chosen at random
    rnd = pts["random, same budget as consensus warmup=2 tau=1"]
    assert rnd["tokens"] < pts["none"]["tokens"]


def test_report_counts_stopped_samples_as_no_answer():
    """A pruned sample is never right, never votes, and is picked only when its k-subset holds
    nothing else; AUROCs are over the finished samples."""
    from hsrm.bon.report import bon_report

    # one prompt, 4 samples; sample 3 was stopped early, scores highest and (partially) reads "7"
    labels = np.array([1, 0, 0, 1], bool)
    scores = {"s": np.array([0.5, 0.2, 0.1, 9.0]), "majority": np.zeros(4)}
    ext = ["7", "3", "3", "7"]
    g = np.array(["p"] * 4)
    rep = bon_report(scores, labels, g, ext, n_boot=10, finished=np.array([1, 1, 1, 0], bool))
    full = bon_report(scores, labels, g, ext, n_boot=10)
    assert full["bon"]["s"]["4"] == 1.0 and full["bon"]["majority"]["4"] == 0.5  # 7-7 vs 3-3 tie
    assert rep["bon"]["s"]["4"] == 1.0  # the best finished sample, sample 0
    assert rep["bon"]["majority"]["4"] == 0.0  # 3 holds two votes of three
    assert rep["pass_at_k"]["4"] == 1.0 and rep["mean_accuracy"] == 0.25
    # k = 1: the stopped slot gives no answer
    assert rep["bon"]["s"]["1"] == rep["mean_accuracy"] == 0.25
    assert rep["within_prompt_auroc"]["s"] == 1.0 and rep["n_stopped_early"] == 1


def test_evaluate_reports_a_pruned_store(tmp_path, capsys, monkeypatch):
    """``hsrm evaluate`` on a store sampled with ``--prune``: the stopped samples count as no
    answer (accuracy over finished samples only), and the report says how many there were."""
    import json

    from hsrm.tasks.synthetic import SyntheticTask

    # the random model never writes a number; grade its first character instead (both classes)
    monkeypatch.setattr(SyntheticTask, "extract", lambda self, text, prompt: text[:1] or None)
    monkeypatch.setattr(SyntheticTask, "check", lambda self, e, p: e is not None and e < "m")
    run, heads, ev = (str(tmp_path / x) for x in ("run", "heads", "eval"))
    sample_args = ["--model", "tiny:0", "--n-prompts", "24", "--n", "8", "--max-new-tokens", "8",
                   "--temperature", "1.0", "--threads", "1"]  # fmt: skip
    prune = ["--prune", "random", "--prune-checkpoints", "2", "--prune-frac", "0.5"]
    assert main(["sample", "--out", run, *sample_args, *prune]) == 0
    assert main(["train", run, "--out", heads, "--head-type", "probe"]) == 0
    capsys.readouterr()
    assert main(["evaluate", run, "--head", heads, "--out", ev]) == 0
    assert "stopped early" in capsys.readouterr().out
    rep = json.loads(Path(ev, "results.json").read_text())
    st = Store(run)
    seen = set(json.loads(Path(heads, "training.json").read_text())["train_prompts"])
    test = [i for i, r in enumerate(st.records) if r["prompt_id"] not in seen]
    cut = [i for i in test if st.records[i]["stop"] == "pruned"]
    assert rep["n_stopped_early"] == len(cut) > 0
    assert any(st.labels[i] for i in cut)  # some partial answers read as right: not counted
    by: dict[str, list[float]] = {}
    for i in test:
        by.setdefault(st.records[i]["prompt_id"], []).append(
            float(st.labels[i] and st.records[i]["stop"] != "pruned")
        )
    assert rep["mean_accuracy"] == pytest.approx(np.mean([np.mean(v) for v in by.values()]))
