import json

import numpy as np
import pytest
import torch

from hsrm.apilog import read_api_log, write_api_log
from hsrm.capture import SampleConfig, sample_prompt
from hsrm.errors import HsrmError
from hsrm.heads import Head, make_head
from hsrm.heads.logits import TOPK_LAYER, topk_token_features, toplogprob_features
from hsrm.metrics import auroc
from hsrm.tasks.base import Prompt


def _entry(lp, k=3, top=True):
    e = {"token": "x", "logprob": lp, "bytes": [120]}
    if top:
        e["top_logprobs"] = [{"token": f"t{j}", "logprob": lp - j, "bytes": None} for j in range(k)]
    return e


def _resp(pid, lps_per_choice, labels=None, model="m", fp="fp0", k=3):
    return {
        "id": f"r-{pid}",
        "object": "chat.completion",
        "model": model,
        "system_fingerprint": fp,
        "choices": [
            {
                "index": j,
                "message": {"role": "assistant", "content": "x" * len(lps)},
                "finish_reason": "stop",
                "logprobs": {"content": [_entry(lp, k) for lp in lps]},
            }
            for j, lps in enumerate(lps_per_choice)
        ],
        "metadata": {"prompt_id": pid, **({"labels": labels} if labels is not None else {})},
    }


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_read_valid_log(tmp_path):
    p = _write(
        tmp_path / "a.jsonl",
        [_resp("q1", [[-0.1, -0.5], [-2.0]], labels=[1, 0]), _resp("q2", [[-9999.0]])],
    )
    s = read_api_log(p)
    assert [x.prompt_id for x in s] == ["q1", "q1", "q2"]
    assert [x.label for x in s] == [1, 0, None]
    assert s[0].k == 3 and s[0].top_logprobs.shape == (2, 3)
    torch.testing.assert_close(s[0].logprobs, torch.tensor([-0.1, -0.5]))
    X = toplogprob_features(s)
    assert X.layers == (TOPK_LAYER,) and X.hidden_size == 9 and X[0].shape == (2, 1, 9)
    assert X.fingerprint.name == "m" and X.fingerprint.revision == "fp0"
    assert float(X[2].min()) >= -30.0  # -9999 underflow is clamped


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda r: r["choices"][0]["logprobs"]["content"][1].pop("top_logprobs"),
            r"b\.jsonl:2: choices\[0\]\.logprobs\.content\[1\] has no top_logprobs",
        ),
        (
            lambda r: r["choices"][0]["logprobs"]["content"][0].update(top_logprobs=[]),
            r"b\.jsonl:2: .*content\[0\] has no top_logprobs",
        ),
        (lambda r: r["choices"][0].pop("logprobs"), r"b\.jsonl:2: choices\[0\] has no logprobs"),
        (lambda r: r.pop("choices"), r"b\.jsonl:2: no choices"),
        (
            lambda r: r["choices"][0]["logprobs"]["content"][0].update(logprob="high"),
            r"b\.jsonl:2: .*must be a number",
        ),
    ],
)
def test_bad_lines_name_the_line(tmp_path, mutate, match):
    good, bad = _resp("q1", [[-0.1]]), _resp("q2", [[-0.1, -0.2]])
    mutate(bad)
    p = _write(tmp_path / "b.jsonl", [good, bad])
    with pytest.raises(HsrmError, match=match):
        read_api_log(p)


def test_k_limits(tmp_path):
    p = _write(tmp_path / "c.jsonl", [_resp("q1", [[-0.1]], k=2)])
    with pytest.raises(HsrmError, match="need k=3"):
        read_api_log(p, k=3)
    with pytest.raises(HsrmError, match="1..20"):
        read_api_log(p, k=21)
    (tmp_path / "d.jsonl").write_text('{"choices": [}\n')
    with pytest.raises(HsrmError, match=r"d\.jsonl:1: malformed JSON"):
        read_api_log(tmp_path / "d.jsonl")


def test_topk_token_features_values():
    f = topk_token_features(torch.tensor([-0.5]), torch.log(torch.tensor([[0.25, 0.5]])))
    # sorted top-k log-probs, their probabilities, chosen, mass outside, entropy of renormalised
    np.testing.assert_allclose(f[0, :2].exp().numpy(), [0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(f[0, 2:4].numpy(), [0.5, 0.25], rtol=1e-6)
    assert f[0, 4] == pytest.approx(-0.5)
    assert f[0, 5] == pytest.approx(0.25)
    q = np.array([2 / 3, 1 / 3])
    assert f[0, 6] == pytest.approx(float(-(q * np.log(q)).sum()), rel=1e-5)


def test_head_trains_from_api_log_and_refuses_other_model(tmp_path):
    # Correct answers are confident: label depends on the chosen tokens' log-probs.
    rng = np.random.default_rng(0)
    rows = []
    for q in range(60):
        choices, labels = [], []
        for _ in range(6):
            y = int(rng.random() < 0.5)
            T = int(rng.integers(1, 5))
            choices.append((rng.normal(-0.3 if y else -1.5, 0.4, size=T)).clip(max=-0.01).tolist())
            labels.append(y)
        rows.append(_resp(f"q{q}", choices, labels))
    s = read_api_log(_write(tmp_path / "log.jsonl", rows))
    X, y = toplogprob_features(s), np.array([x.label for x in s])
    groups = np.array([x.prompt_id for x in s])
    tr = np.array([int(g[1:]) < 40 for g in groups])
    head = make_head("elhsr_toplogprobs", lr=1e-2, max_epochs=8).fit(
        X.subset(np.flatnonzero(tr)), y[tr], groups[tr]
    )
    assert auroc(head.score(X.subset(np.flatnonzero(~tr))), y[~tr]) > 0.8
    head.save(tmp_path / "h")
    other = read_api_log(_write(tmp_path / "o.jsonl", [_resp("z", [[-0.1]], model="m2", fp="fp9")]))
    with pytest.raises(HsrmError, match="m2"):
        Head.load(tmp_path / "h").score(toplogprob_features(other))


def test_hsrm_samples_round_trip(tiny_lm, tmp_path):
    prompt = Prompt("p0", ({"role": "user", "content": "hi"},), "1", prefill="A: ")
    res = sample_prompt(
        tiny_lm, prompt, SampleConfig(n=4, max_new_tokens=5, layers="last", top_logprobs=5)
    )
    path = write_api_log(
        tmp_path / "own.jsonl",
        [res],
        tiny_lm.tokenizer,
        tiny_lm.fingerprint.name,
        tiny_lm.fingerprint.revision,
        labels=[[1, 0, 1, 0]],
    )
    back = read_api_log(path)
    assert [s.label for s in back] == [1, 0, 1, 0]
    assert [s.text for s in back] == [a.text for a in res.answers]
    Xa = toplogprob_features(res.answers, fingerprint=tiny_lm.fingerprint)
    Xb = toplogprob_features(back)
    assert Xa.fingerprint == Xb.fingerprint
    for i in range(4):
        torch.testing.assert_close(Xa[i], Xb[i])
    # finish_reason as OpenAI names it: EOS and stop strings "stop", length and pruned "length"
    for a, why in zip(res.answers, ("eos", "stop", "length", "pruned")):
        a.extra["stop"] = why
    import json

    rec = json.loads(write_api_log(tmp_path / "why.jsonl", [res], tiny_lm.tokenizer).read_text())
    assert [c["finish_reason"] for c in rec["choices"]] == ["stop", "stop", "length", "length"]
    assert rec["metadata"]["pruned"] == [3]
    no_top = sample_prompt(tiny_lm, prompt, SampleConfig(n=2, max_new_tokens=3, layers="last"))
    with pytest.raises(HsrmError, match="top_logprobs=k"):
        write_api_log(tmp_path / "x.jsonl", [no_top], tiny_lm.tokenizer)
