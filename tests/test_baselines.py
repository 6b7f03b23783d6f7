import numpy as np
import pytest
import torch

from hsrm.baselines.judge import LLMJudge
from hsrm.baselines.text_rm import TextRewardModel, rm_text
from hsrm.capture import SampleConfig, parse_layers, sample_prompt
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.logits import LOGITS_LAYER, logit_features
from hsrm.metrics import auroc
from hsrm.tasks.base import Prompt


def _texts(n=48, seed=0):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for i in range(n):
        ok = int(i % 2 == 0)
        texts.append(rm_text(f"q{rng.integers(100)}", "yes yes" if ok else "no no"))
        y.append(ok)
    return texts, np.array(y)


def test_text_rm_learns_and_leaves_the_base_model_alone(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    texts, y = _texts(32)
    rm = TextRewardModel(tiny_lm, lora_r=0, lr=3e-3, epochs=3, batch_size=8, progress=False).fit(
        texts, y
    )
    s = rm.score(texts)
    assert s.shape == (len(texts),) and np.isfinite(s).all()
    assert auroc(s, y) > 0.9
    np.testing.assert_allclose(rm.score(texts, dedupe=True), s, rtol=1e-4, atol=1e-5)
    for k, v in tiny_lm.model.state_dict().items():
        assert torch.equal(v, before[k]), f"fitting the text RM changed the base model's {k}"


def test_text_rm_lora_parameter_count(tiny_lm):
    cfg = tiny_lm.model.config
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_layer = 8 * (d + d) + 8 * (d + kv)  # q_proj d->d and v_proj d->kv, rank 8
    texts, y = _texts(16)
    rm = TextRewardModel(tiny_lm, lora_r=8, progress=False).fit(texts, y)
    assert rm.n_parameters() == cfg.num_hidden_layers * per_layer + d  # + the score head
    top1 = TextRewardModel(tiny_lm, lora_r=8, lora_layers=1, progress=False).fit(texts, y)
    assert top1.n_parameters() == per_layer + d


def test_text_rm_errors(tiny_lm):
    with pytest.raises(HsrmError, match="not fitted"):
        TextRewardModel(tiny_lm).score(["a"])
    with pytest.raises(HsrmError, match="single class"):
        TextRewardModel(tiny_lm).fit(["a", "b"], [1, 1])
    with pytest.raises(HsrmError, match="labels"):
        TextRewardModel(tiny_lm).fit(["a", "b"], [1])


def test_judge_matches_a_plain_forward(tiny_lm):
    judge = LLMJudge(tiny_lm, batch_size=2)
    qs, ans = (
        ["What is 2 + 2?", "Hi", "Which is larger, 3 or 9?"],
        ["The answer is 4.", "Hello there, friend", "9"],
    )
    p, lo = judge.score_both(qs, ans)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    # The batched, padded score equals one unpadded forward pass per example.
    for i in range(3):
        ids = tiny_lm.tokenizer(
            judge.prompt(qs[i], ans[i]), add_special_tokens=False, return_tensors="pt"
        )["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm.model(ids).logits[0, -1].float(), -1)
        assert p[i] == pytest.approx(float(logp[judge.yes_ids].exp().sum()), rel=1e-4)
        want = float(
            torch.logsumexp(logp[judge.yes_ids], 0) - torch.logsumexp(logp[judge.no_ids], 0)
        )
        assert lo[i] == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert judge.n_parameters() == 0
    with pytest.raises(HsrmError, match="template"):
        LLMJudge(tiny_lm, template="no slots")


def test_logit_features_reproduce_sampling_logprobs(tiny_lm):
    # The state captured at answer token t predicts token t+1: its log-softmax logits must give the
    # log-prob that sampling recorded for token t+1.
    prompt = Prompt("p", ({"role": "user", "content": "count"},), "1", prefill="1 2 ")
    res = sample_prompt(
        tiny_lm, prompt, SampleConfig(n=3, max_new_tokens=6, layers="last", temperature=1.0)
    )
    layers = parse_layers("last", tiny_lm.fingerprint.n_layers)
    X = TokenFeatures.from_tensors([a.hidden for a in res.answers], layers, tiny_lm.fingerprint)
    L = logit_features(X, tiny_lm.unembedding())
    assert L.layers == (LOGITS_LAYER,) and L.hidden_size == tiny_lm.fingerprint.vocab_size
    checked = 0
    for i, a in enumerate(res.answers):
        f = L[i][:, 0]  # (T, vocab)
        for t in range(len(a.token_ids) - 1):
            assert float(f[t, a.token_ids[t + 1]]) == pytest.approx(
                float(a.logprobs[t + 1]), abs=1e-4
            )
            checked += 1
    assert checked > 0
    with pytest.raises(HsrmError, match="layer"):
        logit_features(X.select_layers(layers), tiny_lm.unembedding(), layer=0)


@pytest.mark.integration
def test_judge_follows_the_format_on_the_embedded_model(embedded_lm):
    judge = LLMJudge(embedded_lm)
    p = judge.score(["What is 2 + 2?"], ["The answer is 4."])
    # The instruct model answers Yes/No: most of the next-token mass is on those spellings.
    tok_ids = judge.yes_ids + judge.no_ids
    text = judge.prompt("What is 2 + 2?", "The answer is 4.")
    ids = embedded_lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(embedded_lm.model(ids).logits[0, -1].float(), -1)
    assert float(probs[tok_ids].sum()) > 0.5
    assert p[0] == pytest.approx(float(probs[judge.yes_ids].sum()), rel=1e-3)
