"""hsrm.rl: the TRL reward object (a real GRPOTrainer run), RLEV scaling, advantages, OpenRLHF adapter."""

import numpy as np
import pytest
import torch

from hsrm.capture import teacher_force
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.models import tiny_model
from hsrm.rl import HiddenStateReward, group_relative_advantages, openrlhf_reward_func

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def head(lm):
    """An ELHSR head fit on teacher-forced states of the tiny model: answers with a digit are 'good'."""
    rng = np.random.default_rng(0)
    answers, y = [], []
    for i in range(40):
        good = i % 2 == 0
        answers.append(("7" if good else "x") * int(rng.integers(2, 5)))
        y.append(int(good))
    got = teacher_force(lm, "Q: pick\nA: ", answers, LAYERS)
    X = TokenFeatures.from_tensors([a.hidden for a in got], LAYERS, lm.fingerprint)
    return make_head("elhsr", lr=5e-2, max_epochs=30, val_frac=0.0).fit(X, np.array(y))


def test_reward_scores_match_head_and_order(lm, head):
    r = HiddenStateReward(lm, head)
    got = r(prompts=["Q: pick\nA: "] * 2, completions=["777", "xxx"])
    assert len(got) == 2 and all(isinstance(v, float) for v in got)
    assert got[0] > got[1]
    # the same numbers as the head over teacher-forced features
    ans = teacher_force(lm, "Q: pick\nA: ", ["777", "xxx"], LAYERS)
    ref = head.score(TokenFeatures.from_tensors([a.hidden for a in ans], LAYERS, lm.fingerprint))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_reward_ids_mode_strips_eos_and_handles_empty(lm, head):
    tok = lm.tokenizer
    ids = tok("777", add_special_tokens=False)["input_ids"]
    r_ids = HiddenStateReward(lm, head, tokens="ids")
    r_txt = HiddenStateReward(lm, head)
    a = r_ids(
        prompts=["Q: pick\nA: "] * 2,
        completions=["777", ""],
        completion_ids=[ids + [tok.eos_token_id], [tok.eos_token_id]],
    )
    b = r_txt(prompts=["Q: pick\nA: "], completions=["777"])
    assert a[0] == pytest.approx(b[0], abs=1e-5)
    assert a[1] is None  # an empty completion: no opinion, unless empty_reward is set
    assert (
        HiddenStateReward(lm, head, empty_reward=-1.0)(prompts=["p"], completions=[" "])[0] == -1.0
    )


def test_conversational_prompts_use_chat_template(lm, head):
    r = HiddenStateReward(lm, head)
    msgs = [{"role": "user", "content": "pick"}]
    got = r(prompts=[msgs], completions=[[{"role": "assistant", "content": "777"}]])
    ptext = lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert got[0] == pytest.approx(r(prompts=[ptext], completions=["777"])[0], abs=1e-6)


def test_rlev_scaling_and_sigmoid(lm, head):
    base = HiddenStateReward(lm, head, transform="sigmoid")
    rlev = HiddenStateReward(lm, head, transform="sigmoid", value_column="value", alpha=10.0)
    p, c = ["Q: pick\nA: "] * 3, ["777", "777", "777"]
    s = base(prompts=p, completions=c)
    assert all(0 < v < 1 for v in s)
    got = rlev(prompts=p, completions=c, value=[0.0, 0.05, 0.5])
    np.testing.assert_allclose(got, [s[0] * 1.0, s[1] * 1.5, s[2] * 2.0], rtol=1e-6)
    with pytest.raises(HsrmError, match="value_column"):
        rlev(prompts=p, completions=c)
    with pytest.raises(HsrmError, match="value"):
        rlev(prompts=p, completions=c, value=[0.1, "x", 0.2])


def test_head_from_other_model_is_refused(head):
    other = tiny_model(seed=1)
    with pytest.raises(HsrmError, match="trained on"):
        HiddenStateReward(other, head)


def test_group_relative_advantages():
    r = np.array([1.0, 0.0, 1.0, 0.0, 2.0, 5.0, np.nan])
    g = ["a", "a", "a", "a", "b", "c", "c"]
    adv = group_relative_advantages(r, g, eps=0.0)
    ga = r[:4]
    np.testing.assert_allclose(adv[:4], (ga - ga.mean()) / ga.std(ddof=1))
    assert adv[4] == 0.0  # a group of one
    assert adv[5] == 0.0 and adv[6] == 0.0  # one valid reward left in group c
    # agrees with TRL's own formula on a (groups, G) tensor
    t = torch.tensor([[0.1, 0.9, 0.4, 0.3], [2.0, 1.0, 0.0, 1.5]])
    trl_adv = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-4)
    ours = group_relative_advantages(t.flatten(), np.repeat([0, 1], 4))
    np.testing.assert_allclose(ours, trl_adv.flatten().numpy(), rtol=1e-5)


def test_openrlhf_adapter(lm, head):
    f = openrlhf_reward_func(HiddenStateReward(lm, head))
    out = f(["Q: pick\nA: 777", "Q: pick\nA: xxx"], ["Q: pick\nA: ", "Q: pick\nA: "], ["7", "7"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].shape == (2,) and out["rewards"][0] > out["rewards"][1]
    assert torch.all((out["scores"] > 0) & (out["scores"] < 1))
    with pytest.raises(HsrmError, match="does not start"):
        f(["abc"], ["xyz"], [None])


def test_grpo_trainer_calls_and_logs_the_reward(lm, head, tmp_path):
    """A real trl.GRPOTrainer run of a few steps, the hsrm reward beside a plain text reward."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOTrainer

    policy = tiny_model(seed=0)  # same weights as the frozen scoring model: on-policy states
    reward = HiddenStateReward(lm, head, tokens="ids", name="hsrm_elhsr", value_column="value")
    seen = {}

    def length_reward(completions, **kw):
        seen.update(kw)
        return [float(len(c)) / 10 for c in completions]

    ds = Dataset.from_dict(
        {"prompt": ["Q: pick\nA: ", "Q: choose\nA: "] * 2, "value": [0.0, 0.1] * 2}
    )
    args = _grpo_args(tmp_path, 1e-3)
    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=[reward, length_reward],
        args=args,
        train_dataset=ds,
        processing_class=policy.tokenizer,
    )
    trainer.train()
    assert reward.n_calls >= 2  # TRL called it every step
    assert seen["value"] and "trainer_state" in seen  # dataset columns reach the reward functions
    logged = [h for h in trainer.state.log_history if "rewards/hsrm_elhsr/mean" in h]
    assert len(logged) >= 2
    vals = [h["rewards/hsrm_elhsr/mean"] for h in logged]
    assert all(np.isfinite(vals)) and any(v != 0 for v in vals)


def _grpo_args(tmp_path, lr):
    """Two GRPO steps of 4 prompts x 4 generations of at most 6 tokens, on the CPU."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=lr,
        report_to="none",
        save_strategy="no",
        seed=0,
    )


def _lora_policy(seed=0):
    """The tiny model wrapped in LoRA adapters with non-zero weights (so adapters on != base)."""
    from peft import LoraConfig, get_peft_model

    from hsrm.models import LoadedModel

    base = tiny_model(seed=seed)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    return LoadedModel(get_peft_model(base.model, cfg), base.tokenizer, base.fingerprint)


def test_adapters_off_reads_the_base_model_through_the_policy(lm, head):
    pytest.importorskip("peft")
    policy = _lora_policy()
    policy.model.train()
    p, c = ["Q: pick\nA: "] * 3, ["777", "xxx", "7x7"]
    frozen = HiddenStateReward(lm, head)(prompts=p, completions=c)  # a separate base copy
    off = HiddenStateReward(policy, head, mode="adapters_off")(prompts=p, completions=c)
    np.testing.assert_allclose(off, frozen, rtol=1e-5, atol=1e-5)
    assert policy.model.training  # train mode restored after scoring
    # the check can fail: with the adapters on, the states (and scores) differ
    on = HiddenStateReward(policy, head)(prompts=p, completions=c)
    assert np.max(np.abs(np.array(on) - np.array(frozen))) > 1e-3


def test_adapters_off_needs_a_peft_model(lm, head):
    with pytest.raises(HsrmError, match="not a PEFT model"):
        HiddenStateReward(lm, head, mode="adapters_off")
    with pytest.raises(HsrmError, match="mode must be"):
        HiddenStateReward(lm, head, mode="shared")
    with pytest.raises(HsrmError, match="attach"):
        HiddenStateReward(lm, head).attach(lm.model)


def test_grpo_with_lora_and_no_second_model(head, tmp_path):
    """GRPO on LoRA adapters, the reward reading the same model with its adapters off: the
    adapters train, the base weights stay, and TRL logs the reward."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from datasets import Dataset
    from trl import GRPOTrainer

    policy = _lora_policy()
    reward = HiddenStateReward(policy, head, tokens="ids", name="hsrm", mode="adapters_off")
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    args = _grpo_args(tmp_path, 1e-2)
    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["Q: pick\nA: ", "Q: choose\nA: "] * 2}),
        processing_class=policy.tokenizer,
    )
    trainer.train()
    assert reward.n_calls >= 2
    after = dict(trainer.model.named_parameters())
    lora = [k for k in before if "lora_" in k]
    assert lora and any(not torch.equal(before[k], after[k]) for k in lora)
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)
    assert [h["rewards/hsrm/mean"] for h in trainer.state.log_history if "rewards/hsrm/mean" in h]
