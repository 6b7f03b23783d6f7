"""Capture during sampling equals a teacher-forced pass; sampling is seeded per prompt."""

import pytest
import torch

from hsrm.capture import SampleConfig, parse_layers, sample_prompt, teacher_force
from hsrm.errors import HsrmError
from hsrm.tasks import get_task


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _check_equal(lm, prompt, layers, n=6, max_new=6):
    cfg = SampleConfig(n=n, max_new_tokens=max_new, temperature=1.0, seed=3)
    res = sample_prompt(lm, prompt, cfg, layers)
    tf = teacher_force(lm, prompt, [a.token_ids for a in res.answers if a.token_ids], layers)
    answers = [a for a in res.answers if a.token_ids]
    assert answers, "every sample was empty"
    for a, b in zip(answers, tf):
        assert (
            a.hidden.shape
            == b.hidden.shape
            == (len(a.token_ids), len(layers), lm.fingerprint.hidden_size)
        )
        assert _rel(a.hidden, b.hidden) < 1e-3
        assert _rel(a.logprobs, b.logprobs) < 1e-3
    return res


def test_capture_equals_teacher_forcing_tiny(tiny_lm):
    prompt = get_task("synthetic", n=3).prompts()[0]
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    res = _check_equal(tiny_lm, prompt, layers)
    assert res.prompt_hidden.shape == (len(layers), tiny_lm.fingerprint.hidden_size)


@pytest.mark.integration
def test_capture_equals_teacher_forcing_embedded(embedded_lm):
    prompt = get_task("synthetic", n=3).prompts()[1]
    layers = parse_layers("every:4", embedded_lm.fingerprint.n_layers)
    res = _check_equal(embedded_lm, prompt, layers, n=4)
    texts = [a.text for a in res.answers]
    assert any(t.strip() for t in texts)


def test_seeded_per_prompt(tiny_lm):
    ps = get_task("synthetic", n=3).prompts()
    cfg = SampleConfig(n=4, max_new_tokens=4, seed=7)
    a = sample_prompt(tiny_lm, ps[1], cfg)
    sample_prompt(tiny_lm, ps[0], cfg)  # another prompt in between must not shift the stream
    b = sample_prompt(tiny_lm, ps[1], cfg)
    assert [x.token_ids for x in a.answers] == [x.token_ids for x in b.answers]
    c = sample_prompt(tiny_lm, ps[1], SampleConfig(n=4, max_new_tokens=4, seed=8))
    assert [x.token_ids for x in a.answers] != [x.token_ids for x in c.answers]


def test_capture_off_gives_same_tokens(tiny_lm):
    p = get_task("synthetic", n=2).prompts()[0]
    cfg = SampleConfig(n=4, max_new_tokens=5, seed=1)
    on, off = (
        sample_prompt(tiny_lm, p, cfg, capture=True),
        sample_prompt(tiny_lm, p, cfg, capture=False),
    )
    assert [a.token_ids for a in on.answers] == [a.token_ids for a in off.answers]
    assert off.answers[0].hidden is None
    torch.testing.assert_close(on.answers[0].logprobs, off.answers[0].logprobs)


def test_greedy_and_top_logprobs(tiny_lm):
    p = get_task("synthetic", n=2).prompts()[0]
    r = sample_prompt(
        tiny_lm, p, SampleConfig(n=3, temperature=0, max_new_tokens=4, top_logprobs=5)
    )
    assert len({tuple(a.token_ids) for a in r.answers}) == 1  # greedy: identical
    a = r.answers[0]
    assert a.extra["top_logprobs"].shape == (len(a.token_ids), 5)
    # greedy picks the most likely token, so its log-prob is the top-1 log-prob
    torch.testing.assert_close(a.logprobs, a.extra["top_logprobs"][:, 0])


def test_parse_layers():
    assert parse_layers("all", 4) == (0, 1, 2, 3, 4)
    assert parse_layers("every:2", 5) == (0, 2, 4, 5)
    assert parse_layers("last", 30) == (30,)
    with pytest.raises(HsrmError, match="negative"):  # tests/test_layer_spec.py: the rest
        parse_layers("0,-1", 30)
    with pytest.raises(HsrmError, match="out of range"):
        parse_layers("0,40", 30)
    with pytest.raises(HsrmError, match="cannot parse"):
        parse_layers("odd", 30)


def test_bad_config():
    with pytest.raises(HsrmError, match="top_p"):
        SampleConfig(top_p=0).validate()


def test_prenorm_state_is_the_final_norm_input(tiny_lm):
    from hsrm.capture import prenorm_index

    nL = tiny_lm.fingerprint.n_layers
    layers = parse_layers("last,prenorm", nL)
    assert layers == (nL, prenorm_index(nL))
    prompt = get_task("synthetic", n=2).prompts()[0]
    res = _check_equal(
        tiny_lm, prompt, layers
    )  # sampling == teacher forcing for the pre-norm state too
    a = next(a for a in res.answers if a.token_ids)
    norm = tiny_lm.model.get_decoder().norm
    with torch.no_grad():
        torch.testing.assert_close(norm(a.hidden[:, 1]), a.hidden[:, 0], rtol=1e-4, atol=1e-5)
    assert parse_layers("prenorm", nL) == (prenorm_index(nL),)
    # hooks are removed afterwards
    assert not norm._forward_pre_hooks


def test_token_stats_match_their_definitions():
    import math

    from hsrm.capture import token_stats

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, -1)
    st = token_stats(logp, k=5)
    p = logp.exp()
    # self-certainty = KL(U || p), computed the long way
    kl = (torch.full_like(p, 1 / 50) * (math.log(1 / 50) - logp)).sum(-1)
    torch.testing.assert_close(st["self_certainty"], kl)
    torch.testing.assert_close(st["entropy"], -(p * logp).sum(-1))
    torch.testing.assert_close(
        st["confidence"], -logp.sort(-1, descending=True).values[:, :5].mean(-1)
    )
    # a uniform distribution is minimally certain
    flat = token_stats(torch.full((1, 50), -math.log(50)))
    assert abs(float(flat["self_certainty"])) < 1e-5


def test_sampled_answers_carry_per_token_confidence(tiny_lm):
    from hsrm.capture import SampleConfig, sample_prompts
    from hsrm.tasks import get_task

    prompts = get_task("synthetic", n=2).prompts()
    res = sample_prompts(tiny_lm, prompts, SampleConfig(n=3, max_new_tokens=4))
    assert [r.prompt.id for r in res] == [p.id for p in prompts]
    for a in res[0].answers:
        assert a.self_certainty.shape == a.logprobs.shape == a.confidence.shape
        assert bool((a.self_certainty >= -1e-5).all()) and bool((a.confidence > 0).all())


def test_teacher_forcing_shares_the_prompt_and_equals_one_plain_forward(tiny_lm):
    """The prompt runs once and its cache is shared by the answer rows; each answer's
    states and log-probs equal one uncached forward over prompt + answer, whatever the chunking
    and however uneven the answers."""
    from hsrm import lm as lmx

    prompt = get_task("synthetic", n=3).prompts()[1]
    layers = (0, 1, 2)
    answers = [[5, 9, 11], [7], [3, 3, 3, 3, 8], [12, 4]]
    got = teacher_force(tiny_lm, prompt, answers, layers, batch_size=3)  # chunks of 3 and 1
    p_ids = lmx.encode(tiny_lm.tokenizer, lmx.prompt_text(tiny_lm.tokenizer, prompt))
    _, head, softcap = lmx.lm_parts(tiny_lm.model)
    P = len(p_ids)
    for a, g in zip(answers, got, strict=True):
        with torch.inference_mode():
            out = lmx.forward(tiny_lm, torch.tensor([p_ids + a]), layers=layers)
            logp = torch.log_softmax(
                lmx.head_logits(head, softcap, out.last[:, P - 1 : P + len(a) - 1]), -1
            )[0]
        want_h = out.stack(layers, slice(P, P + len(a)))[0]  # (T, L, d)
        want_lp = logp.gather(-1, torch.tensor(a)[:, None]).squeeze(-1)
        assert g.token_ids == a and g.hidden.shape == want_h.shape
        assert _rel(g.hidden, want_h) < 1e-4
        assert _rel(g.logprobs, want_lp) < 1e-4
