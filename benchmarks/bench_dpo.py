"""DPO with hsrm-filtered pairs vs random pairs vs verifier pairs (one round, small, CPU).

On the embedded synthetic task (arith + compare) with the embedded SmolLM2-135M-Instruct:

1. fit an ELHSR head (and the text-only control) on samples of a first set of prompts;
2. sample K answers per prompt on a second, disjoint set and build one pair per prompt with four
   rules from the *same* samples: (a) hsrm head best-vs-worst, (b) random pairs, (c) verifier pairs
   (correct vs wrong: the ceiling), (d) text-only control best-vs-worst (TF-IDF on question + answer);
3. for each arm, DPO (TRL, LoRA via PEFT) from the base model on its pairs, then per-sample
   accuracy (K samples per prompt) on a third, held-out set of prompts, before and after, with
   bootstrap CIs over prompts and the paired after-minus-before difference.

All three prompt sets are disjoint by question text. Run: ``python benchmarks/bench_dpo.py``
(``--quick`` for a smoke run). Writes ``benchmarks/results/dpo.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hsrm.baselines.controls import TextOnlyScorer
from hsrm.capture import SampleConfig, parse_layers, prompt_text, sample_prompt
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.metrics import bootstrap_ci, within_prompt_auroc
from hsrm.models import load_model
from hsrm.prefs.build import PromptSamples, pair_stats, select_pairs, write_pairs
from hsrm.prefs.loop import LoopConfig, _lora_policy, dpo_train, evaluate_policy
from hsrm.tasks import get_task
from hsrm.tasks.base import first_number

log = logging.getLogger("bench_dpo")
ROOT = Path(__file__).resolve().parent


def split(prompts, sizes, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prompts))
    out, seen, i = [], set(), 0
    for n in sizes:
        part = []
        while len(part) < n:
            p = prompts[int(order[i])]
            i += 1
            if p.question in seen:
                continue
            seen.add(p.question)
            part.append(p)
        out.append(part)
    return out


def larger_share(pairs) -> float:
    """Share of pairs whose chosen answer is the larger number: 0.5 for a rule with no size bias.
    The task mixes "larger" / "smaller" and + / - so that a size preference is a shortcut."""
    v = []
    for p in pairs:
        x, y = first_number(p.chosen), first_number(p.rejected)
        if x is not None and y is not None:
            v.append(float(x) > float(y))
    return float(np.mean(v)) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    ap.add_argument("--n-head", type=int, default=64, help="prompts to fit the head on")
    ap.add_argument("--n-dpo", type=int, default=64, help="prompts to build DPO pairs on")
    ap.add_argument("--n-eval", type=int, default=64, help="held-out evaluation prompts")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt (pairs and evaluation)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--lora-last-n", type=int, default=8, help="LoRA on the last N blocks only")
    ap.add_argument(
        "--shots", type=int, default=1, help="few-shot examples per prompt (1: short prompts)"
    )
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--layers", default="every:6")
    ap.add_argument("--heads", default="elhsr,probe", help="hsrm heads, one arm each")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--work", default="runs/bench_dpo")
    ap.add_argument("--tag", default="", help="suffix of the result files (dpo<TAG>.json)")
    ap.add_argument("--render", help="only rewrite the Markdown table of this results JSON")
    a = ap.parse_args()
    if a.render:  # e.g. after adding a column: recompute it from the run's saved pairs
        path = Path(a.render)
        rep = json.loads(path.read_text())
        for name, r in rep["arms"].items():
            f = Path(a.work + a.tag) / f"pairs_{name}.jsonl"
            if "chosen_number_larger" not in r and f.exists():
                r["chosen_number_larger"] = larger_share(
                    [json.loads(x) for x in f.read_text().splitlines()]
                )
        atomic_write_json(path, rep)
        atomic_write_text(path.with_suffix(".md"), to_markdown(rep))
        return
    if a.quick:
        a.n_head, a.n_dpo, a.n_eval, a.k, a.epochs = 12, 8, 6, 4, 1.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(a.threads)  # more threads than free cores slows torch down many-fold
    t_start = time.time()
    work = Path(a.work + a.tag)
    work.mkdir(parents=True, exist_ok=True)

    lm = load_model()
    layers = parse_layers(a.layers, lm.fingerprint.n_layers)
    task = get_task("synthetic", n=800, families="arith,compare", seed=a.seed, shots=a.shots)
    head_p, dpo_p, eval_p = split(task.prompts(), (a.n_head, a.n_dpo, a.n_eval), a.seed)
    scfg = SampleConfig(n=a.k, temperature=0.8, max_new_tokens=6, seed=a.seed)
    timing = {}

    # 1. the head and the text-only control, on their own prompts
    t = time.time()
    feats, y, groups, texts = [], [], [], []
    for p in head_p:
        res = sample_prompt(lm, p, scfg, layers=layers)
        for ans in res.answers:
            feats.append(ans.hidden)
            y.append(int(task.check(task.extract(ans.text, p), p)))
            groups.append(p.id)
            texts.append(f"{p.question} => {ans.text}")
    y, groups = np.array(y), np.array(groups)
    X = TokenFeatures.from_tensors(feats, layers, lm.fingerprint)
    heads = {}
    for name in a.heads.split(","):
        params = {"seed": a.seed} if name == "elhsr" else {}
        heads[name] = make_head(name, **params).fit(X, y, groups)
    text_ctl = TextOnlyScorer().fit(texts, y)
    timing["head_s"] = time.time() - t
    log.info(
        "heads fit on %d samples (accuracy %.3f) in %.0f s", len(y), y.mean(), timing["head_s"]
    )

    # 2. samples on the DPO prompts, scored by each head, the control and the verifier
    t = time.time()
    by_head: dict[str, list[PromptSamples]] = {h: [] for h in heads}
    ctl_samples, plain = [], []
    for p in dpo_p:
        res = sample_prompt(lm, p, scfg, layers=layers)
        txt = [ans.text for ans in res.answers]
        lab = np.array([int(task.check(task.extract(x, p), p)) for x in txt])
        ptxt = prompt_text(lm.tokenizer, p)
        F = TokenFeatures.from_tensors([ans.hidden for ans in res.answers], layers, lm.fingerprint)
        for h, head in heads.items():
            by_head[h].append(PromptSamples(p, ptxt, txt, head.score(F), lab))
        ctl = text_ctl.score([f"{p.question} => {x}" for x in txt])
        ctl_samples.append(PromptSamples(p, ptxt, txt, ctl, lab))
        plain.append(PromptSamples(p, ptxt, txt, None, lab))
    timing["sample_s"] = time.time() - t
    lab = np.concatenate([s.labels for s in plain])
    grp = np.concatenate([[s.prompt.id] * len(s.texts) for s in plain])
    filt = {"sample_accuracy": float(lab.mean())}
    for h, ss in by_head.items():
        filt[f"{h}_within_prompt_auroc"] = within_prompt_auroc(
            np.concatenate([s.scores for s in ss]), lab, grp
        )
    filt["text_only_within_prompt_auroc"] = within_prompt_auroc(
        np.concatenate([s.scores for s in ctl_samples]), lab, grp
    )
    log.info("DPO prompts: %s", filt)

    arms = {
        f"hsrm_{h}": select_pairs(ss, "head", margin=0.0, drop_disagreements=False, seed=a.seed)
        for h, ss in by_head.items()
    }
    arms["random"] = select_pairs(plain, "random", seed=a.seed)
    # verifier pairs: a random correct vs a random wrong answer (no head information)
    arms["verifier"] = select_pairs(plain, "verifier", seed=a.seed)
    arms["text_only"] = select_pairs(
        ctl_samples, "head", margin=0.0, drop_disagreements=False, seed=a.seed
    )

    # 3. before / after
    eval_seed = a.seed + 1000
    t = time.time()
    base = evaluate_policy(lm, eval_p, task, a.k, 0.8, 6, eval_seed, greedy=False)
    timing["eval_base_s"] = time.time() - t
    log.info("base accuracy %.3f %s", base["accuracy"], base["accuracy_ci"])
    cfg = LoopConfig(
        lr=a.lr, beta=a.beta, epochs=a.epochs, batch_size=8, seed=a.seed, lora_last_n=a.lora_last_n
    )
    results = {}
    for name, (pairs, stats) in arms.items():
        t = time.time()
        path = write_pairs(work / f"pairs_{name}.jsonl", pairs)
        policy = _lora_policy(load_model(), cfg, None)
        policy.train()
        policy, hist = dpo_train(policy, lm.tokenizer, path, cfg, work / f"trainer_{name}")
        policy.eval()
        from hsrm.models import LoadedModel

        plm = LoadedModel(policy.get_base_model(), lm.tokenizer, lm.fingerprint)
        t_train = time.time() - t
        ev = evaluate_policy(plm, eval_p, task, a.k, 0.8, 6, eval_seed, greedy=False)
        diff = {pid: ev["per_prompt"][pid] - base["per_prompt"][pid] for pid in base["per_prompt"]}
        logs = [h for h in hist if "loss" in h]
        results[name] = {
            "pairs": len(pairs),
            "pair_quality": pair_stats(pairs),
            "chosen_number_larger": larger_share(pairs),
            "select_stats": stats,
            "accuracy": ev["accuracy"],
            "accuracy_ci": ev["accuracy_ci"],
            "delta": float(np.mean(list(diff.values()))),
            "delta_ci": list(bootstrap_ci(diff, seed=a.seed)),
            "train_steps": len(logs),
            "train_loss_first_last": [logs[0]["loss"], logs[-1]["loss"]] if logs else None,
            "train_reward_accuracy_last": logs[-1].get("rewards/accuracies") if logs else None,
            "train_reward_margin_last": logs[-1].get("rewards/margins") if logs else None,
            "per_prompt": ev["per_prompt"],
            "train_s": t_train,
            "eval_s": time.time() - t - t_train,
        }
        log.info(
            "%s: %d pairs, accuracy %.3f (delta %+.3f %s)",
            name,
            len(pairs),
            ev["accuracy"],
            results[name]["delta"],
            results[name]["delta_ci"],
        )
    timing["total_s"] = time.time() - t_start
    rep = {
        "setup": {
            "model": lm.fingerprint.short(),
            "task": "synthetic arith+compare",
            "n_head_prompts": a.n_head,
            "n_dpo_prompts": a.n_dpo,
            "n_eval_prompts": a.n_eval,
            "k": a.k,
            "temperature": 0.8,
            "head": "elhsr",
            "layers": list(layers),
            "dpo": {
                "epochs": a.epochs,
                "lr": a.lr,
                "beta": a.beta,
                "batch_size": 8,
                "lora_r": cfg.lora_r,
                "lora_last_n": cfg.lora_last_n,
                "lora_alpha": cfg.lora_alpha,
                "target_modules": cfg.target_modules,
            },
            "rounds": 1,
            "shots": a.shots,
            "quick": a.quick,
            "threads": a.threads,
            "seed": a.seed,
        },
        "filter_quality": filt,
        "base": {k: base[k] for k in ("accuracy", "accuracy_ci", "per_prompt")},
        "arms": results,
        "timing": timing,
    }
    out = Path(a.out)
    stem = ("dpo_quick" if a.quick else "dpo") + a.tag
    atomic_write_json(out / f"{stem}.json", rep)
    atomic_write_text(out / f"{stem}.md", to_markdown(rep))
    print(to_markdown(rep))


def to_markdown(rep) -> str:
    s = rep["setup"]
    lo, hi = rep["base"]["accuracy_ci"]
    f = rep["filter_quality"]
    lines = [
        f"# DPO with hsrm-filtered pairs ({'QUICK smoke run, ' if s['quick'] else ''}1 round, {s['model']})",
        "",
        f"Synthetic arith+compare ({s['shots']}-shot prompts); head fit on {s['n_head_prompts']} prompts, pairs built on {s['n_dpo_prompts']} "
        f"other prompts (K={s['k']} samples each, T={s['temperature']}), per-sample accuracy on {s['n_eval_prompts']} "
        f"held-out prompts (K={s['k']}). DPO: TRL DPOTrainer, LoRA r={s['dpo']['lora_r']} on "
        f"{','.join(s['dpo']['target_modules'])} of the last {s['dpo']['lora_last_n']} blocks, {s['dpo']['epochs']} epoch(s), lr {s['dpo']['lr']}, beta {s['dpo']['beta']}. "
        "95% CIs: bootstrap over held-out prompts; delta = paired per-prompt after - before.",
        "",
        f"Samples on the pair prompts: accuracy {f['sample_accuracy']:.3f}; within-prompt AUROC (how well each "
        "scorer ranks a prompt's answers; 0.5 = chance): "
        + ", ".join(
            f"{k.replace('_within_prompt_auroc', '')} {v:.3f}"
            for k, v in f.items()
            if k.endswith("auroc")
        )
        + ".",
        "",
        "| arm | pairs | clean / flipped / tied pairs | chosen = larger number | accuracy after [95% CI] | delta vs base [95% CI] |",
        "|---|---|---|---|---|---|",
        f"| base (no DPO) | - | - | - | {rep['base']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | - |",
    ]
    names = {
        "hsrm_elhsr": "(a) hsrm-filtered: ELHSR best vs worst",
        "hsrm_probe": "(a') hsrm-filtered: probe best vs worst",
        "random": "(b) random pairs",
        "verifier": "(c) verifier pairs (ceiling)",
        "text_only": "(d) control: text-only scorer best vs worst",
    }
    for k, r in rep["arms"].items():
        q = r["pair_quality"]
        qual = f"{q.get('clean', float('nan')):.2f} / {q.get('flipped', float('nan')):.2f} / {q.get('tied', float('nan')):.2f}"
        lines.append(
            f"| {names.get(k, k)} | {r['pairs']} | {qual} | {r.get('chosen_number_larger', float('nan')):.2f} | {r['accuracy']:.3f} [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}] "
            f"| {r['delta']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] |"
        )
    lines += [
        "",
        "Pairs: clean = chosen correct and rejected wrong (by the task's checker), flipped = the reverse, "
        "tied = same label. Every arm's pairs come from the same samples. 'chosen = larger number': share of "
        "pairs whose chosen answer is the larger number (0.5 = no size bias; the task mixes larger/smaller and +/-, "
        "so a size preference is a shortcut).",
        "",
        f"Total time {rep['timing']['total_s'] / 60:.1f} min on {s['threads']} CPU thread(s).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
