"""GRPO with a hidden-state reward, on CPU, in a few minutes: TRL's GRPOTrainer trains LoRA adapters
on the embedded SmolLM2-135M-Instruct, rewarded by an ELHSR head that reads the *base* model's
hidden states through the policy itself (adapters disabled: no second model in memory).

    python examples/grpo_hsrm.py                       # fits a small head first (about a minute)
    python examples/grpo_hsrm.py --head runs/head      # or use a saved ELHSR head of this model
    python examples/grpo_hsrm.py --mode copy           # the reward on a separate frozen copy

Steps: (1) without --head, sample 32 synthetic prompts x 4 answers (seed 0) and fit ELHSR on them;
(2) wrap the model in LoRA (r=8 on q/k/v/o of the top 4 blocks) and run GRPO on other synthetic prompts (task seed 1)
for --steps steps, 2 prompts x 4 completions (<= 6 tokens) per step; (3) print, per step, the hsrm reward TRL
logged and the completions' accuracy under the task's checker (a second reward function with
weight 0: logged, not trained on). ``--json`` writes the per-step numbers and the run's costs
(peak RSS, parameter bytes, seconds per step), used by benchmarks/bench_rl_modes.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def fit_head(lm, out: Path, threads: int):
    """A small ELHSR head on the embedded model: 32 synthetic prompts x 4 sampled answers."""
    from hsrm.bon.demo import DEMO_ELHSR
    from hsrm.bon.train import TrainConfig, train
    from hsrm.engines import sample
    from hsrm.sampling import SampleRunConfig

    run = out / "sample"
    store = sample(
        SampleRunConfig(out=str(run), n_prompts=32, n=4, layers="every:6", threads=threads, seed=0),
        lm=lm,
        progress=False,
    )
    return train(
        TrainConfig(
            run=str(run),
            out=str(out / "head"),
            head_type="elhsr",
            layers="every:6",
            test_frac=0.0,
            params=dict(DEMO_ELHSR),
        ),
        store=store,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", default="", help="saved ELHSR head folder (default: fit one)")
    ap.add_argument("--mode", default="adapters_off", choices=["adapters_off", "copy"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="write per-step rewards and costs here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hsrm.capture import prompt_text
    from hsrm.heads import Head
    from hsrm.models import LoadedModel, load_model
    from hsrm.rl import HiddenStateReward
    from hsrm.tasks import get_task

    lm = load_model(device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="grpo_hsrm_"))
    t0 = time.perf_counter()
    if not args.head:
        print("fitting an ELHSR head: 32 prompts x 4 sampled answers ...", flush=True)
    head = Head.load(args.head) if args.head else fit_head(lm, tmp, args.threads)
    t_head = time.perf_counter() - t0 if not args.head else 0.0

    task = get_task("synthetic", n=64, families="arith,compare", seed=1)  # not the head's prompts
    prompts = task.prompts()
    by_text = {prompt_text(lm.tokenizer, p): p for p in prompts}
    ds = Dataset.from_dict({"prompt": list(by_text)})

    # LoRA on the top 4 blocks only: backward then stops there, which makes a CPU step affordable
    n = lm.fingerprint.n_layers
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        layers_to_transform=list(range(n - 4, n)),
        task_type="CAUSAL_LM",
    )
    policy = get_peft_model(lm.model, lora)
    if args.mode == "adapters_off":
        scorer = LoadedModel(policy, lm.tokenizer, lm.fingerprint)  # the policy itself
    else:
        scorer = load_model(device="cpu")  # a second, frozen copy of the initial weights
    reward = HiddenStateReward(scorer, head, tokens="ids", name="hsrm", mode=args.mode)
    reward_s = [0.0]

    def hsrm(prompts, completions, completion_ids=None, **kw):
        t = time.perf_counter()
        out = reward(prompts=prompts, completions=completions, completion_ids=completion_ids)
        reward_s[0] += time.perf_counter() - t
        return out

    hsrm.__name__ = "hsrm"

    def accuracy(prompts, completions, **kw):
        """The task's checker on each completion (logged only: reward weight 0)."""
        out = []
        for p, c in zip(prompts, completions):
            pr = by_text[p]
            out.append(float(task.check(task.extract(c, pr), pr)))
        return out

    cfg = GRPOConfig(
        output_dir=str(tmp / "grpo"),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,  # the head was fit on answers of <= 6 tokens
        gradient_checkpointing=False,  # 135M fits; recomputation would cost a third more time
        temperature=0.8,
        max_steps=args.steps,
        learning_rate=args.lr,
        logging_steps=1,
        reward_weights=[1.0, 0.0],
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )

    class PrintRewards(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "rewards/hsrm/mean" in logs:
                print(
                    f"step {state.global_step}: hsrm reward {logs['rewards/hsrm/mean']:+.3f}, "
                    f"accuracy {logs['rewards/accuracy/mean']:.3f}",
                    flush=True,
                )

    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[hsrm, accuracy],
        args=cfg,
        train_dataset=ds,
        processing_class=lm.tokenizer,
        callbacks=[PrintRewards()],
    )
    print(f"GRPO, {args.steps} steps, reward mode {args.mode} ...", flush=True)
    t1 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t1

    rows = [
        {
            "step": int(h["step"]),
            "hsrm_reward": float(h["rewards/hsrm/mean"]),
            "accuracy": float(h["rewards/accuracy/mean"]),
        }
        for h in trainer.state.log_history
        if "rewards/hsrm/mean" in h
    ]
    print(
        f"\nreward curve (mode={args.mode}; head "
        f"{f'fitted in {t_head:.0f} s' if not args.head else args.head})"
    )
    print("step  hsrm reward (mean of 8)  accuracy (task checker)")
    for r in rows:
        bar = "#" * max(0, int(round((r["hsrm_reward"] + 3) * 5)))
        print(f"{r['step']:>4}  {r['hsrm_reward']:>+23.3f}  {r['accuracy']:>23.3f}  {bar}")

    models = [policy] + ([] if scorer.model is policy else [scorer.model])
    seen: set[int] = set()
    param_bytes = 0
    for m in models:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                param_bytes += p.numel() * p.element_size()
    cost = {
        "mode": args.mode,
        "steps": args.steps,
        "seconds_per_step": t_train / max(1, args.steps),
        "reward_seconds_per_step": reward_s[0] / max(1, args.steps),
        "param_bytes": param_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": args.threads,
    }
    print(
        f"{args.steps} steps: {cost['seconds_per_step']:.1f} s/step "
        f"({cost['reward_seconds_per_step']:.2f} s in the reward), parameters "
        f"{param_bytes / 2**20:.0f} MiB, peak RSS {cost['peak_rss_bytes'] / 2**20:.0f} MiB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cost": cost}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
