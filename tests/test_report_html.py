"""results.html: built from a tiny demo and a hand-made report, opened by real headless Chromium
(the DOM after the page's script ran must hold the plots, table rows and tokens, and no JS error)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from hsrm.bon.demo import demo
from hsrm.bon.report import bon_report
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.models import tiny_model
from hsrm.report.bon import bon_figure, small_store_warnings
from hsrm.report.html import (
    ScoreData,
    TokenExample,
    pairs_score_data,
    write_bon_html,
    write_detect_html,
    write_pairs_html,
)
from hsrm.report.svg import reliability, roc_curve
from tests.conftest import tiny_demo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(path, tmp_path):
    """The DOM after scripts ran, and Chromium's log (console messages go to stderr)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    cmd = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        path.resolve().as_uri(),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def status(dom):
    m = re.search(r'id="render-status"[^>]*>', dom)
    assert m, "no render-status element"
    attrs = dict(re.findall(r'data-([\w-]+)="(\d+)"', m.group(0)))
    return {k: int(v) for k, v in attrs.items()}


def shown_series(dom):
    """The series the page's script found visible in the first panel (``bonStatus``)."""
    m = re.search(r'id="render-status"[^>]*data-series-names="([^"]*)"', dom)
    assert m, "no series status"
    return m.group(1).split("|")


def assert_clean(dom, log):
    assert re.search(r'<div id="js-errors"></div>', dom), "the page's script reported an error"
    assert "Uncaught" not in log, log[-2000:]
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', dom)


def test_roc_and_reliability_numbers():
    fpr, tpr = roc_curve(np.array([3.0, 2.0, 2.0, 1.0]), np.array([1, 1, 0, 0]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    c, a, n, ece = reliability(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 1, 1, 1]))
    np.testing.assert_allclose(c, [0.05, 0.95])
    np.testing.assert_allclose(a, [0.5, 1.0])
    assert list(n) == [2, 2] and ece == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)


def test_token_contributions_reproduce_the_score():
    lm = tiny_model(seed=0)
    rng = np.random.default_rng(0)
    hs = [torch_randn(int(rng.integers(2, 6)), 3, lm.fingerprint.hidden_size, i) for i in range(30)]
    X = TokenFeatures.from_tensors(hs, (0, 1, 2), lm.fingerprint)
    y = np.arange(30) % 2
    head = make_head("elhsr", layers=[1, 2], max_epochs=2, val_frac=0.0).fit(X, y)
    got = head.token_contributions(X)
    s = head.score(X)
    for (g, r), si, h in zip(got, s, hs):
        assert g.shape == r.shape == (h.shape[0],) and np.all((g > 0) & (g < 1))
        assert (g * r).sum() / g.sum() == pytest.approx(si, abs=1e-5)


def torch_randn(*shape_seed):
    import torch

    *shape, seed = shape_seed
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_bon_figure_one_panel_per_family_and_small_store_warning():
    rng = np.random.default_rng(0)
    n_p, n = 8, 4
    groups = np.repeat(np.arange(n_p), n)
    y = rng.integers(0, 2, n_p * n)
    fam = np.where(groups % 2 == 0, "a", "b")
    scores = {"elhsr": rng.normal(size=len(y)), "random": np.zeros(len(y))}
    rep = bon_report(scores, y, groups, families=fam, n_boot=20)
    fig = bon_figure(rep)
    assert len(fig.axes) == 3  # all + 2 families
    # one CI band (a PolyCollection) per head per panel, none for the baselines
    assert all(len(ax.collections) == 1 for ax in fig.axes)
    # the legend sits below the panels, on none of them
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    (leg,) = fig.legends
    box = leg.get_window_extent(r)
    assert all(box.y1 <= ax.get_window_extent(r).y0 for ax in fig.axes), "legend on a panel"
    w = small_store_warnings(rep)
    assert any("only 8 held-out prompts" in x for x in w)
    assert not any("mixed" in x or "both right and wrong" in x for x in w)
    flat = bon_report(scores, np.repeat([0, 1], 16)[: len(y)], groups, n_boot=5)  # no mixed prompt
    assert any("both right and wrong" in x for x in small_store_warnings(flat))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A tiny demo; labels by answer text (a random tiny model is never right), as in test_pipeline."""
    from hsrm.tasks.synthetic import SyntheticTask

    out = tmp_path_factory.mktemp("html") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)
        _run_demo(out)
    return out


def _run_demo(out):
    demo(tiny_demo(out, n_boot=30))


def test_demo_writes_a_report_that_renders_in_chromium(demo_dir, tmp_path):
    page = demo_dir / "results.html"
    text = page.read_text()
    assert "<svg" in text and "class='tok'" in text
    assert "only 12 held-out prompts" in text  # the small-store warning is on the page
    # results.json keeps its schema (no per-sample arrays were added to it)
    saved = json.loads((demo_dir / "results.json").read_text())
    assert "bon" in saved and "scores" not in saved
    dom, log = open_in_chromium(page, tmp_path)
    assert_clean(dom, log)
    st = status(dom)
    # best-of-N + ROC + calibration plots, the overall + 2 family tables' rows, coloured tokens
    assert st["svg"] >= 3, st
    assert st["rows"] >= 3 * 8, st
    assert st["tokens"] > 0, st
    assert dom.count("<figure") == st["svg"]
    # at a glance: the pick, majority, the best other training-free selector and the oracle,
    # and a legend beside (below) the 3 panels, not on one
    rep = json.loads((demo_dir / "results.json").read_text())
    shown = shown_series(dom)
    assert st["series"] == 4 and shown[:3] == ["oracle", "picked", "majority"], shown
    assert shown[3] not in ("random", "text_only", "answer_prior") and shown[3] in rep["bon"]
    assert st["panels"] == 3 and st["legend-overlaps"] == 0, st


def test_one_click_shows_every_series(demo_dir, tmp_path):
    page = tmp_path / "r.html"
    text = (demo_dir / "results.html").read_text()
    n = len(json.loads((demo_dir / "results.json").read_text())["bon"]) + 1  # + the oracle
    click = (
        "<script>document.addEventListener('DOMContentLoaded',function(){"
        "document.getElementById('bon-all').click();});</script></main>"
    )
    page.write_text(text.replace("</main>", click))
    dom, log = open_in_chromium(page, tmp_path)
    assert_clean(dom, log)
    st = status(dom)
    assert st["series"] == n > 4, st
    assert st["legend-overlaps"] == 0, st


def test_pairs_and_detect_pages_render(tmp_path):
    rng = np.random.default_rng(1)
    res = {
        "head": {"acc": 0.7, "lo": 0.6, "hi": 0.8, "n_pairs": 40, "n_questions": 10},
        "log-prob": {"acc": 0.5, "lo": 0.4, "hi": 0.6, "n_pairs": 40, "n_questions": 10},
    }
    y = np.arange(80) % 2
    data = ScoreData(
        {"head": y + rng.normal(size=80), "log-prob": rng.normal(size=80)},
        y,
        examples=[TokenExample("best", "Q?", ["a", "<b>"], [0.2, 0.9], [1.0, -2.0], 0.3, 1)],
    )
    p = write_pairs_html(tmp_path / "prefs.html", res, data)
    assert "&lt;b&gt;" in p.read_text()  # token text is escaped
    dom, log = open_in_chromium(p, tmp_path)
    assert_clean(dom, log)
    st = status(dom)
    assert st["svg"] == 1 and st["rows"] == 2 and st["tokens"] == 2

    rows = [
        {
            "method": m,
            "auroc": 0.6,
            "ci_low": 0.5,
            "ci_high": 0.7,
            "n_answers": 80,
            "n_questions": 10,
            "hallucination_rate": 0.5,
        }
        for m in ("harp (h)", "perplexity")
    ]
    det = ScoreData(
        {"harp (h)": -data.scores["head"], "perplexity": rng.normal(size=80)},
        y,
        calibrated=("harp (h)",),
    )
    p = write_detect_html(tmp_path / "detect.html", rows, det)
    dom, log = open_in_chromium(p, tmp_path)
    assert_clean(dom, log)
    st = status(dom)
    assert st["svg"] == 2 and st["rows"] == 2 and "only 10 questions" in dom


def test_a_script_error_would_be_caught(tmp_path):
    """The check above can fail: a page whose script throws shows the error in #js-errors."""
    rep = bon_report({"elhsr": np.arange(8.0)}, np.arange(8) % 2, np.repeat([0, 1], 4), n_boot=5)
    p = write_bon_html(tmp_path / "r.html", rep)
    p.write_text(p.read_text().replace("</main>", "<script>undefinedFunction()</script></main>"))
    dom, _ = open_in_chromium(p, tmp_path)
    assert "JS error" in dom and "undefinedFunction" in dom


def test_pairs_score_data_labels_roles_and_explains_tokens():
    from hsrm.prefs.evaluate import PairSet
    from hsrm.tokenizers import byte_tokenizer

    lm = tiny_model(seed=0)
    tok = byte_tokenizer()
    texts = ["good", "bad", "fine", "meh"]
    hs = [
        torch_randn(len(tok(t, add_special_tokens=False)["input_ids"]), 2, 32, i)
        for i, t in enumerate(texts)
    ]
    X = TokenFeatures.from_tensors(hs, (1, 2), lm.fingerprint)
    head = make_head("elhsr", max_epochs=2, val_frac=0.0).fit(X, np.array([1, 0, 1, 0]))
    ps = PairSet(
        X,
        texts,
        ["Q1", "Q1", "Q2", "Q2"],
        np.array(["q1", "q1", "q2", "q2"]),
        np.array([0, 2]),
        np.array([1, 3]),
        ["p0", "p1"],
        np.array(["q1", "q2"]),
    )
    data = pairs_score_data(ps, {"head": head.score(X)}, head, tok)
    assert list(data.labels) == [1, 0, 1, 0]
    assert data.examples and all(len(e.tokens) == len(e.gate) for e in data.examples)
    assert {e.prompt for e in data.examples} <= {"Q1", "Q2"}
    assert len(data.examples) >= 2  # best and worst at least (4 distinct answers)
    assert not any("wrong" in e.title or "right" in e.title for e in data.examples)  # pair terms
