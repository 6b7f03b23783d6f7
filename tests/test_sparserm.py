from pathlib import Path

import numpy as np
import pytest
import torch

from hsrm.capture import teacher_force
from hsrm.errors import HsrmError
from hsrm.heads import Head, make_head
from hsrm.heads.sparserm import _pairs_in_groups
from hsrm.metrics import pairwise_accuracy
from hsrm.prefs.data import PrefPair, pair_prompt_text, read_pairs, truthfulqa_pairs
from hsrm.prefs.evaluate import (
    PairSet,
    _encode_question,
    encode_pairs,
    evaluate_arms,
    head_arm,
    logprob_arm,
    template_prefix_len,
    text_only_arm,
)
from hsrm.sae import train_topk_sae
from tests.conftest import make_features

FIX = Path(__file__).parent / "fixtures" / "prefs"


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """Synthetic answers (signal on layer 2), split by prompt, and an SAE on layer 2's tokens."""
    X, y, g = make_features(n_prompts=80, seed=3)
    tr = np.array([int(s[1:]) < 60 for s in g])
    Xtr, Xte = X.subset(np.flatnonzero(tr)), X.subset(np.flatnonzero(~tr))
    acts = torch.cat([Xtr[i][:, 2] for i in range(len(Xtr))])
    sae, _ = train_topk_sae(
        acts, d_sae=64, k=4, steps=150, batch_size=256, lr=3e-3, meta={"hook_layer": 2}
    )
    path = tmp_path_factory.mktemp("sae") / "sae"
    sae.save(path)
    return Xtr, y[tr], g[tr], Xte, y[~tr], g[~tr], str(path)


def _pair_acc(s, y, g):
    p = _pairs_in_groups(y, g)
    return pairwise_accuracy(s[p[:, 0]], s[p[:, 1]])


FAST = {"k": 16, "hidden": 32, "epochs": 80, "lr": 3e-3}


def test_pairs_in_groups():
    y = np.array([1, 0, 0, 1, 1, 0, 1])
    g = np.array(["a", "a", "a", "b", "b", "b", "c"])
    p = _pairs_in_groups(y, g)
    assert sorted(map(tuple, p)) == [(0, 1), (0, 2), (3, 5), (4, 5)]


def test_sparserm_projection_learns_and_roundtrips(split_data, tmp_path):
    Xtr, ytr, gtr, Xte, yte, gte, sae = split_data
    head = make_head("sparserm", sae=sae, **FAST).fit(Xtr, ytr, gtr)
    assert head.layers_ == (2,)  # the SAE's hook layer
    assert _pair_acc(head.score(Xte), yte, gte) > 0.8
    sel = head.selected_latents()
    assert len(sel) == 32 and len({s["latent"] for s in sel}) == 32
    diffs = [s["freq_diff"] for s in sel]
    assert min(diffs[:16]) >= max(diffs[16:])  # top-K by the difference, then top-K by its negative
    head.save(tmp_path / "h")
    again = Head.load(tmp_path / "h")
    np.testing.assert_allclose(again.score(Xte), head.score(Xte), rtol=1e-5, atol=1e-6)
    # ~1e5 parameters at the paper's sizes: 2K=256 inputs x 512 hidden
    assert head.n_parameters() < 64 * 16 + 32 * 32 + 200


@pytest.mark.parametrize(
    "params",
    [
        {"features": "raw"},
        {"features": "random"},
        {"loss": "bt"},
        {"loss": "bce"},
        {"pool": "last"},
        {"hidden": 0},
    ],
)
def test_variants_fit_score_and_roundtrip(split_data, tmp_path, params):
    Xtr, ytr, gtr, Xte, yte, gte, sae = split_data
    head = make_head("sparserm", sae=sae, **{**FAST, **params}).fit(Xtr, ytr, gtr)
    s = head.score(Xte)
    assert s.shape == (len(Xte),) and np.isfinite(s).all()
    if params.get("features") != "random":
        assert _pair_acc(s, yte, gte) > 0.7
    head.save(tmp_path / "h")
    np.testing.assert_allclose(Head.load(tmp_path / "h").score(Xte), s, rtol=1e-5, atol=1e-6)


def test_bad_parameters(split_data, tmp_path):
    Xtr, ytr, gtr, *_, sae = split_data
    with pytest.raises(HsrmError, match="unknown features"):
        make_head("sparserm", sae=sae, features="sparse").fit(Xtr, ytr, gtr)
    with pytest.raises(HsrmError, match="unknown loss"):
        make_head("sparserm", sae=sae, loss="hinge").fit(Xtr, ytr, gtr)
    with pytest.raises(HsrmError, match="needs groups"):
        make_head("sparserm", sae=sae).fit(Xtr, ytr)
    with pytest.raises(HsrmError, match="not captured"):
        make_head("sparserm", sae=sae, layer=7).fit(Xtr, ytr, gtr)
    from hsrm.sae import SAE

    SAE(8, 16).save(tmp_path / "small")
    with pytest.raises(HsrmError, match="d_in=8"):
        make_head("sparserm", sae=str(tmp_path / "small")).fit(Xtr, ytr, gtr)
    with pytest.raises(HsrmError, match="no \\(chosen, rejected\\) pair"):
        make_head("denserm").fit(Xtr, ytr, np.arange(len(ytr)).astype(str))


def test_pair_encoding_equals_teacher_forcing_the_full_prompt(tiny_lm):
    q = "Where did fortune cookies originate?"
    ptext = pair_prompt_text(tiny_lm.tokenizer, q)
    answers = ["In San Francisco.", "China", "The precise origin of fortune cookies is unclear."]
    core = teacher_force(tiny_lm, ptext, answers, (0, 1, 2))
    skip = template_prefix_len(tiny_lm.tokenizer)
    assert skip > 0
    mine, q_states = _encode_question(tiny_lm, ptext, skip, answers, (0, 1, 2))
    for a, (h, lp) in zip(core, mine):
        torch.testing.assert_close(h, a.hidden, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lp, a.logprobs, atol=1e-5, rtol=1e-4)
    n_q = len(tiny_lm.tokenizer(ptext, add_special_tokens=False)["input_ids"]) - skip
    assert q_states is not None and q_states.shape == (n_q, 3, tiny_lm.fingerprint.hidden_size)
    ps = encode_pairs(tiny_lm, [PrefPair("p", q, answers[0], answers[1], "g")], [0, 1, 2])
    torch.testing.assert_close(ps.feats[0].float(), core[0].hidden, atol=2e-2, rtol=1e-2)
    assert ps.prompt_groups == ["g"] and ps.prompt_hidden[0].shape == q_states.shape


def test_pairset_cache_and_evaluation(tiny_lm, tmp_path):
    pairs = truthfulqa_pairs(FIX / "tqa_small.csv", max_answers=2)
    cache = tmp_path / "c.safetensors"
    ps = encode_pairs(tiny_lm, pairs, "all", cache=cache)
    assert len(ps) == len(pairs) and len(ps.texts) < 2 * len(pairs)  # answers encoded once
    again = encode_pairs(tiny_lm, [], "all", cache=cache)  # read from the cache
    assert again.texts == ps.texts and again.pair_ids == ps.pair_ids
    torch.testing.assert_close(again.feats[3], ps.feats[3], atol=1e-2, rtol=1e-2)  # float16 on disk
    np.testing.assert_allclose(again.mean_logprob(), ps.mean_logprob(), atol=1e-5)
    assert again.token_states(1).shape[0] > sum(ps.feats[i].shape[0] for i in range(len(ps.texts)))
    # all chosen x rejected combinations per question: each answer once, grouped by question
    X, y, g = ps.head_inputs()
    assert len(X) == len(ps.texts) and set(g) == set(ps.pair_groups)
    assert y.sum() == len(set(ps.chosen.tolist()))
    # an answer both chosen and rejected: one row per pair side, grouped by pair id
    import dataclasses

    odd = dataclasses.replace(
        ps,
        chosen=np.append(ps.chosen, ps.rejected[0]),
        rejected=np.append(ps.rejected, ps.chosen[0]),
        pair_ids=[*ps.pair_ids, "swap"],
        pair_groups=np.append(ps.pair_groups, ps.pair_groups[0]),
    )
    X, y, g = odd.head_inputs()
    assert len(X) == 2 * len(odd) and y.sum() == len(odd) and len(set(g)) == len(odd)
    q = np.unique(ps.pair_groups)
    tr = ps.subset_pairs(np.flatnonzero(np.isin(ps.pair_groups, q[:3])))
    te = ps.subset_pairs(np.flatnonzero(~np.isin(ps.pair_groups, q[:3])))
    assert [te.texts[i] for i in te.chosen] == [p.chosen for p in pairs if p.group in set(q[3:])]
    res = evaluate_arms(
        tr,
        te,
        {
            "lp": logprob_arm,
            "text": text_only_arm,
            "dense": head_arm("denserm", hidden=8, epochs=5),
        },
        n_boot=50,
    )
    for r in res.values():
        assert 0 <= r["lo"] <= r["acc"] <= r["hi"] <= 1 and r["n_questions"] == 2
    with pytest.raises(HsrmError, match="share 3 question"):
        evaluate_arms(tr, tr, {"lp": logprob_arm})
    with pytest.raises(HsrmError, match="no pair cache"):
        PairSet.load(tmp_path / "none.safetensors")
    with pytest.raises(HsrmError, match="holds other pairs"):
        encode_pairs(tiny_lm, pairs[:3], "all", cache=cache)


@pytest.mark.integration
def test_cli_train_evaluate_inspect_on_embedded_model(embedded_lm, tmp_path, capsys, monkeypatch):
    import hsrm.models
    from hsrm.cli import main

    # load the model once, not per command; 1 thread: on a busy 2-core machine 2 are several times slower
    monkeypatch.setattr(hsrm.models, "load_model", lambda *a, **k: embedded_lm)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _cli_steps(embedded_lm, tmp_path, capsys, main)
    finally:
        torch.set_num_threads(threads)


def _cli_steps(embedded_lm, tmp_path, capsys, main):
    ptext = pair_prompt_text(embedded_lm.tokenizer, "Why do veins appear blue?")
    answers = ["Because of how light penetrates skin.", "Deoxygenated blood is blue."]
    core = teacher_force(embedded_lm, ptext, answers, (15,))
    mine, q_states = _encode_question(
        embedded_lm, ptext, template_prefix_len(embedded_lm.tokenizer), answers, (15,)
    )
    assert q_states is not None  # SmolLM2's template prefix re-tokenizes to itself
    for a, (h, lp) in zip(core, mine):
        torch.testing.assert_close(h, a.hidden, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(lp, a.logprobs, atol=1e-4, rtol=1e-4)
    assert (
        main(
            [
                "sae",
                "train",
                "--data",
                str(FIX / "tqa_small.csv"),
                "--out",
                str(tmp_path / "sae"),
                "--layer",
                "15",
                "--latents",
                "64",
                "--k",
                "4",
                "--steps",
                "30",
            ]
        )
        == 0
    )
    assert "fraction of variance explained" in capsys.readouterr().out
    head = tmp_path / "head"
    args = [
        "--pairs",
        str(FIX / "tqa_small.csv"),
        "--test-frac",
        "0.4",
        "--cache",
        str(tmp_path / "c.safetensors"),
    ]
    assert (
        main(
            [
                "prefs",
                "train",
                *args,
                "--split",
                "train",
                "--sae",
                str(tmp_path / "sae"),
                "--out",
                str(head),
                "--params",
                '{"k": 8, "hidden": 16, "epochs": 20}',
            ]
        )
        == 0
    )
    assert (head / "config.json").exists()
    assert (
        main(
            [
                "prefs",
                "evaluate",
                *args[:4],
                "--split",
                "test",
                "--head",
                str(head),
                "--n-boot",
                "50",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pairwise accuracy" in out and "2 questions" in out
    assert (
        main(
            [
                "sae",
                "inspect",
                "--sae",
                str(tmp_path / "sae"),
                "--head",
                str(head),
                "--data",
                str(FIX / "good.jsonl"),
                "--n-latents",
                "2",
            ]
        )
        == 0
    )
    # bad input: a clear error and exit code 2, before any model work
    assert (
        main(
            [
                "prefs",
                "train",
                "--pairs",
                str(FIX / "missing_field.jsonl"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "missing_field.jsonl:2" in capsys.readouterr().err
    assert read_pairs(FIX / "good.jsonl")[1].kept == 4
