from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrm.detect import (
    HALLUCINATION,
    TRUTHFUL,
    CaptureConfig,
    DetectData,
    TruthfulQATask,
    auroc_row,
    capture,
    evaluate,
    label_rouge,
    length_normalised_entropy,
    load_labelled,
    make_task,
    markdown_table,
    perplexity,
    relabel_truthfulqa,
    rouge_l,
    split_questions,
)
from hsrm.errors import HsrmError
from hsrm.heads import make_head
from tests.conftest import make_features

CSV = Path(__file__).parent / "fixtures" / "harp_truthfulqa.csv"


# -- ROUGE-L and the labelling rule ----------------------------------------------------------------
def test_rouge_l_values():
    assert rouge_l("The cat sat.", "the cat sat") == 1.0  # case and punctuation ignored
    assert rouge_l("dogs bark", "the cat sat") == 0.0
    assert rouge_l("", "the cat") == 0.0
    # LCS(the cat sat on the mat, the cat is on the mat) = 5 of 6 words each way
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS 3, precision 3/3, recall 3/6 -> F1 = 2/3; F1 is symmetric
    assert rouge_l("a b c", "a x b y c z") == pytest.approx(2 / 3)
    assert rouge_l("a x b y c z", "a b c") == pytest.approx(2 / 3)
    # order matters: a subsequence, not a bag of words
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)


def test_label_rule():
    correct, incorrect = ["The sky is blue"], ["The sky is green"]
    assert label_rouge("the sky is blue.", correct, incorrect) == TRUTHFUL
    assert label_rouge("The sky is green", correct, incorrect) == HALLUCINATION
    # close to neither list: unlabelled
    assert label_rouge("I have no comment", correct, incorrect) is None
    # "the sky is" matches both equally (F1 6/7 > 0.7 with each): a tie is unlabelled
    assert label_rouge("the sky is", correct, incorrect) is None
    # the threshold is strict and configurable
    assert label_rouge("sky blue", correct, incorrect) is None  # F1 = 2/3
    assert label_rouge("sky blue", correct, incorrect, threshold=0.5) == TRUTHFUL


# -- the TruthfulQA task ----------------------------------------------------------------------------
def test_truthfulqa_task_prompts_and_labels():
    task = TruthfulQATask(CSV, mode="rouge", shots=2)
    ps = task.prompts()
    assert len(ps) == 6 and len({p.id for p in ps}) == 6
    p = ps[1]
    assert p.messages[-1]["content"] == "What colour is the sky on a clear day?"
    assert len(p.messages) == 5  # two primer pairs + the question
    assert task.extract("The sky is blue.\nQ: what else", p) == TRUTHFUL  # first line only
    assert task.check(task.extract("It is red", p), p) is False
    assert task.extract("Bananas", p) is None
    refs = TruthfulQATask(CSV, mode="refs", limit=2)
    assert len(refs.prompts()) == 2
    q = refs.prompts()[1]
    assert refs.extract(" the sky is blue ", q) == TRUTHFUL
    assert refs.extract("It is red", q) == HALLUCINATION
    assert refs.extract("The sky is blue and green", q) is None
    with pytest.raises(HsrmError, match="mode"):
        TruthfulQATask(CSV, mode="x")
    with pytest.raises(HsrmError, match="shots"):
        TruthfulQATask(CSV, shots=9)
    with pytest.raises(HsrmError, match="needs a path"):
        make_task("truthfulqa")
    assert make_task("synthetic", n_prompts=5).name == "synthetic"


# -- baselines, split, table ------------------------------------------------------------------------
def test_uncertainty_baselines():
    lps = [torch.tensor([0.0, 0.0]), torch.tensor([-1.0, -3.0]), torch.zeros(0)]
    np.testing.assert_allclose(perplexity(lps), [1.0, np.exp(2.0), 1.0])
    ents = [torch.tensor([1.0, 3.0]), torch.tensor([0.5]), torch.zeros(0)]
    np.testing.assert_allclose(length_normalised_entropy(ents), [2.0, 0.5, 0.0])


def test_split_by_question():
    groups = np.repeat([f"q{i}" for i in range(20)], 3)
    tr, te = split_questions(groups, 0.3, seed=1)
    assert not set(groups[tr]) & set(groups[te])
    assert len(set(groups[te])) == 6 and (tr | te).all()
    with pytest.raises(HsrmError, match="at least 2"):
        split_questions(np.array(["a", "a"]))


def test_auroc_row_direction_and_ci():
    y = np.array([1, 0] * 20)  # 1 = correct
    g = np.repeat(np.arange(20), 2)
    good = auroc_row("m", 1.0 - y + 0.0, y, g, n_boot=50)  # high score on wrong answers
    assert good["auroc"] == 1.0 and good["ci_low"] == 1.0
    assert auroc_row("m", y + 0.0, y, g, n_boot=50)["auroc"] == 0.0
    rng = np.random.default_rng(0)
    r = auroc_row("noise", rng.random(40), y, g, n_boot=200)
    assert r["ci_low"] <= r["auroc"] <= r["ci_high"] and r["n_questions"] == 20
    assert "| noise |" in markdown_table([r])


def _detect_data(seed):
    X, y, g = make_features(n_prompts=30, seed=seed, layers=(0, 2, 4))
    lps = [X.logprobs(i) for i in range(len(X))]
    texts = ["answer right" if lab else "answer wrong" for lab in y]  # wording gives it away
    return DetectData(X, y, g, texts, lps, [lp.abs() for lp in lps])


def test_evaluate_rows():
    train, test = _detect_data(1), _detect_data(2)
    heads = {
        "harp-full": partial(
            make_head, "harp", projection="full", layer=2, lr=1e-2, epochs=5, hidden=32
        )
    }
    rows, fitted = evaluate(train, test, heads, n_boot=50)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"harp-full", "perplexity", "ln-entropy", "text-only (TF-IDF)"}
    assert by["harp-full"]["auroc"] > 0.8
    assert by["text-only (TF-IDF)"]["auroc"] == 1.0  # the control catches a wording shortcut
    assert 0.2 < by["perplexity"]["auroc"] < 0.8  # random log-probs carry no signal
    assert fitted["harp-full"].required_layers() == (2,)


# -- capture into a store (tiny random model) -------------------------------------------------------
def test_capture_refs_and_sampled(tiny_lm, tmp_path):
    cfg = CaptureConfig(
        source=f"truthfulqa-refs:{CSV}",
        n_prompts=4,
        layers="last",
        refs_per_side=2,
        shots=1,
        shard_prompts=3,
    )
    st = capture(tiny_lm, cfg, tmp_path / "refs")
    assert len(st) == 16 and st.complete and st.layers == (tiny_lm.fingerprint.n_layers,)
    assert [r["label"] for r in st.records[:4]] == [True, True, False, False]
    data = load_labelled(st)
    assert len(data) == 16 and data.n_unlabelled == 0 and data.labels.sum() == 8
    assert data.features[0].shape[1:] == (1, tiny_lm.fingerprint.hidden_size)
    assert len(data.logprobs[0]) == data.features[0].shape[0]
    # sampled answers of a random model match no reference: all unlabelled, counted
    cfg = CaptureConfig(
        source=f"truthfulqa:{CSV}", n_prompts=2, n=2, max_new_tokens=4, layers="last", shots=0
    )
    st2 = capture(tiny_lm, cfg, tmp_path / "sampled")
    assert len(st2) == 4
    labs = relabel_truthfulqa(st2, CSV, 0.7)
    assert labs == [None] * 4
    with pytest.raises(HsrmError, match="no labelled answers"):
        load_labelled(st2)
    # a label override (e.g. another threshold) is used as given
    d2 = load_labelled(st2, labels=[1, 0, None, 1], drop_empty=False)
    assert list(d2.labels) == [1, 0, 1] and d2.n_unlabelled == 1
    with pytest.raises(HsrmError, match="labels"):
        load_labelled(st2, labels=[1])


def test_sampled_capture_takes_the_sampling_options(tiny_lm, tmp_path):
    """Sampled capture is ``hsrm sample``'s path: top-k, min-p and stop strings reach the sampler
    and the store records them, as a ``hsrm sample`` store does."""
    kw = dict(source="synthetic", n_prompts=3, n=3, max_new_tokens=6, layers="last", shots=1)
    cut = CaptureConfig(**kw, top_k=4, min_p=0.05, stop=["#"])
    st = capture(tiny_lm, cut, tmp_path / "cut")
    got = st.meta["sampling"]
    assert (got["top_k"], got["min_p"], got["stop"]) == (4, 0.05, ["#"])
    assert len(st) == 9 and not any("#" in r["text"] for r in st.records)
    # without the stop string the same samples run on, and do say "#"; the others are unchanged
    full = capture(tiny_lm, CaptureConfig(**kw, top_k=4, min_p=0.05), tmp_path / "full")
    assert any("#" in r["text"] for r in full.records)
    for a, b in zip(st.records, full.records):
        assert a["text"] == b["text"] if "#" not in b["text"] else len(a["text"]) < len(b["text"])


# -- the CLI: configs, --params, the model rule (tiny model) --------------------------------------
def test_cli_train_evaluate_with_config_and_params(tiny_lm, tmp_path, capsys):
    import json

    from hsrm.cli import main

    store = tmp_path / "store"
    capture(
        tiny_lm,
        CaptureConfig(
            source=f"truthfulqa-refs:{CSV}", n_prompts=6, layers="last", shots=0, out=str(store)
        ),
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "train:\n  head_type: harp\n  split: all\n"
        "  params: {projection: random, size: 4, epochs: 2, hidden: 8}\n"
    )
    head = tmp_path / "head"
    argv = ["detect", "train", "--store", str(store), "--out", str(head), "--config", str(cfg)]
    assert main([*argv, "--threads", "1"]) == 0
    assert "trained harp on 24 answers (6 questions)" in capsys.readouterr().out
    saved = json.loads((head / "config.json").read_text())
    assert saved["params"]["epochs"] == 2 and saved["params"]["projection"] == "random"
    # flags win over the file; --params as JSON
    assert main([*argv, "--params", '{"epochs": 1}']) == 0
    assert json.loads((head / "config.json").read_text())["params"]["epochs"] == 1
    capsys.readouterr()
    # bad input: one clear message, exit code 2
    assert main([*argv, "--params", "{epochs: 1}"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*argv, "--params", "nope=1"]) == 2
    assert "has no parameter(s) ['nope']" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  bogus: 1\n")
    assert main([*argv[:-1], str(bad)]) == 2
    assert "unknown field 'bogus'" in capsys.readouterr().err
    rows_json = tmp_path / "rows.json"
    rc = main(
        ["detect", "evaluate", "--store", str(store), "--head", str(head), "--n-boot", "10"]
        + ["--out", str(rows_json), "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "| harp (head) |" in out and "(test split)" in out
    methods = [r["method"] for r in json.loads(rows_json.read_text())]
    assert methods == ["harp (head)", "perplexity", "ln-entropy", "text-only (TF-IDF)"]


def test_score_loads_only_embedded_or_named_models():
    from hsrm.detect.commands import model_for_head
    from hsrm.models import DEFAULT_MODEL, ModelFingerprint

    fp = ModelFingerprint(DEFAULT_MODEL, "r", 30, 576, 49152)
    assert model_for_head(fp, None) == DEFAULT_MODEL
    other = ModelFingerprint("someone/evil-model", "r", 2, 8, 10)
    with pytest.raises(HsrmError, match="--model someone/evil-model"):
        model_for_head(other, None)
    assert model_for_head(other, "tiny:0") == "tiny:0"


def test_truthfulqa_is_a_registered_task():
    from hsrm.tasks import TASKS, get_task

    assert TASKS["truthfulqa"] is TruthfulQATask
    refs = get_task(f"truthfulqa-refs:{CSV}", limit=2)
    assert isinstance(refs, TruthfulQATask) and refs.mode == "refs" and len(refs.prompts()) == 2
    assert refs.describe()["name"] == "truthfulqa"  # stores keep reading it as TruthfulQA
    assert (
        make_task(f"truthfulqa:{CSV}", n_prompts=3, shots=0).prompts()[0].messages[0]["role"]
        == "user"
    )


# -- the CLI end to end with the embedded model ----------------------------------------------------
def test_parse_params():
    from hsrm.cli._params import parse_params as _parse_params

    assert _parse_params(["size=0.1", "projection=random", "pool=mean", "epochs=3"]) == {
        "size": 0.1,
        "projection": "random",
        "pool": "mean",
        "epochs": 3,
    }
    with pytest.raises(HsrmError, match="key=value"):
        _parse_params(["size"])


@pytest.mark.integration
def test_cli_capture_train_evaluate_score(tmp_path, capsys):
    from hsrm.cli import main

    store, head = str(tmp_path / "store"), str(tmp_path / "head")
    rc = main(
        [
            "detect",
            "capture",
            "--source",
            f"truthfulqa-refs:{CSV}",
            "--n-prompts",
            "4",
            "--layers",
            "last",
            "--shots",
            "1",
            "--out",
            store,
        ]
    )
    assert rc == 0
    assert "16 answers, 8 correct, 8 wrong, 0 unlabelled" in capsys.readouterr().out
    rc = main(
        [
            "detect",
            "train",
            "--store",
            store,
            "--head-type",
            "harp",
            "--split",
            "all",
            "--params",
            "epochs=3",
            "hidden=64",
            "--out",
            head,
        ]
    )
    assert rc == 0 and "trained harp on 16 answers (4 questions)" in capsys.readouterr().out
    cfg = (Path(head) / "config.json").read_text()
    assert (
        '"projection": "reasoning"' in cfg and "svd" in cfg
    )  # basis from the cached unembedding SVD
    rc = main(
        [
            "detect",
            "evaluate",
            "--store",
            store,
            "--head",
            head,
            "--split",
            "all",
            "--n-boot",
            "20",
            "--out",
            str(tmp_path / "results.json"),
        ]
    )
    out = capsys.readouterr().out
    assert (
        rc == 0 and "| harp (head) |" in out and "| perplexity |" in out and "| ln-entropy |" in out
    )
    page = (tmp_path / "results.html").read_text()  # beside the JSON; rendered in test_report_html
    assert page.count("<svg") >= 1 and "harp (head)" in page
    rc = main(
        [
            "detect",
            "score",
            "--head",
            head,
            "--question",
            "What colour is the sky?",
            "--answer",
            "The sky is blue.",
            "It is green.",
        ]
    )
    lines = [
        ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("p(hallucination)=")
    ]
    assert (
        rc == 0
        and len(lines) == 2
        and "max at token" in lines[0]
        and "'The sky is blue.'" in lines[0]
    )
    # bad input: a clear error, exit code 2
    assert main(["detect", "train", "--store", str(tmp_path / "nope"), "--out", head]) == 2
    assert "not a sample store" in capsys.readouterr().err


def test_capture_records_the_resolved_dtype_and_resumes_only_in_it(tmp_path, capsys, monkeypatch):
    """``detect capture`` takes the model flags, records the dtype resolved (never ``auto``) and
    refuses to resume its store in another, before the model loads."""
    import json

    import hsrm.models
    from hsrm.cli import main

    out = tmp_path / "cap"
    argv = ["detect", "capture", "--model", "tiny:0", "--n-prompts", "2", "--n", "2"]
    argv += ["--max-new-tokens", "2", "--layers", "last", "--shard-prompts", "1", "--out", str(out)]
    assert main([*argv, "--dtype", "bfloat16", "--device", "cpu"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["model_dtype"], meta["model_device"]) == ("bfloat16", "cpu")
    capsys.readouterr()
    loads = []
    real = hsrm.models.load_model
    monkeypatch.setattr(hsrm.models, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert main([*argv, "--dtype", "float32"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{out / 'meta.json'}: the store was sampled with model_dtype='bfloat16'" in err
    assert "model_dtype='float32'" in err and not loads
