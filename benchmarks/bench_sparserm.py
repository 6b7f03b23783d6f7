"""SparseRM on TruthfulQA preference pairs with the embedded model (SmolLM2-135M-Instruct).

Pairs: each question's (correct, incorrect) reference answers (``--max-answers`` of each, all
combinations), split train / test by question. Features are teacher-forced once into a cache under
``runs/sparserm/``; an SAE is trained on the train questions' token states at the SAE layer; every
arm trains from the cache. Writes ``benchmarks/results/sparserm.{json,md}``.

    .venv/bin/python benchmarks/bench_sparserm.py            # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.prefs.evaluate import (
    PairSet,
    encode_pairs,
    evaluate_arms,
    head_arm,
    logprob_arm,
    paired_difference,
    text_only_arm,
)

log = logging.getLogger("bench_sparserm")


def split(ps: PairSet, test_frac: float, seed: int) -> tuple[PairSet, PairSet]:
    groups = np.unique(ps.pair_groups.astype(str))
    rng = np.random.default_rng(seed)
    test_g = set(
        rng.choice(groups, size=int(round(test_frac * len(groups))), replace=False).tolist()
    )
    te = np.array([str(g) in test_g for g in ps.pair_groups])
    return ps.subset_pairs(np.flatnonzero(~te)), ps.subset_pairs(np.flatnonzero(te))


def first_n_pairs(ps: PairSet, n: int, seed: int) -> PairSet:
    """About ``n`` pairs from whole questions drawn at random (never a question split in two)."""
    groups = np.unique(ps.pair_groups.astype(str))
    order = np.random.default_rng(seed).permutation(groups)
    keep, count = set(), 0
    sizes = {g: int((ps.pair_groups.astype(str) == g).sum()) for g in groups}
    for g in order:
        if count >= n:
            break
        keep.add(g)
        count += sizes[g]
    return ps.subset_pairs(np.flatnonzero([str(g) in keep for g in ps.pair_groups]))


def train_sae(
    train: PairSet, layer: int, out: Path, d_sae: int, k: int, steps: int, test: PairSet
) -> dict:
    from hsrm.sae import SAE, sae_stats, train_topk_sae

    if (out / "cfg.json").exists():
        sae = SAE.load(out)
        stats = dict(sae.meta.get("hsrm_train", {}))
    else:
        acts = train.token_states(layer)
        sae, stats = train_topk_sae(
            acts,
            d_sae=d_sae,
            k=k,
            steps=steps,
            batch_size=256,
            lr=1e-3,
            meta={
                "hook_layer": layer,
                "model_name": "smollm2-135m-instruct",
                "hook_name": f"hidden_states.{layer}",
            },
        )
        stats.pop("history", None)
        sae.save(out)
    held = sae_stats(sae, test.token_states(layer))
    return {"layer": layer, "d_sae": sae.d_sae, "k": sae.k, "train": stats, "test_questions": held}


def fmt(r: dict) -> str:
    return f"{r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/truthfulqa/TruthfulQA.csv")
    ap.add_argument("--cache", default="runs/sparserm/tqa_pairs.safetensors")
    ap.add_argument("--max-answers", type=int, default=2)
    ap.add_argument("--layers", default="every:3", help="layers cached (the sweep runs over them)")
    ap.add_argument("--sae-layer", type=int, default=15, help="paper: a middle layer")
    ap.add_argument("--sae-latents", type=int, default=1024)
    ap.add_argument("--sae-k", type=int, default=32)
    ap.add_argument("--sae-steps", type=int, default=1500)
    ap.add_argument("--sweep-sae-layers", default="6,12,18,24")
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine"
    )
    ap.add_argument("--out", default="benchmarks/results/sparserm")
    ap.add_argument(
        "--sections",
        default="main,latents,sweep,efficiency,ksweep",
        help="sections to (re)run; the others are kept from an existing JSON",
    )
    ap.add_argument(
        "--summarize-splits",
        action="store_true",
        help="only combine OUT.json and OUT_seed*.json (main sections) into OUT_splits.md",
    )
    a = ap.parse_args()
    if a.summarize_splits:
        summarize_splits(Path(a.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    from hsrm.models import load_model
    from hsrm.prefs.data import truthfulqa_pairs

    lm = load_model()
    pairs = truthfulqa_pairs(
        a.data, max_answers=a.max_answers, seed=0
    )  # --seed varies the split only
    ps = encode_pairs(lm, pairs, a.layers, cache=a.cache)
    train, test = split(ps, a.test_frac, a.seed)
    log.info(
        "pairs: %d train (%d questions), %d test (%d questions)",
        len(train),
        len(set(train.pair_groups)),
        len(test),
        len(set(test.pair_groups)),
    )
    res: dict = {
        "model": lm.fingerprint.to_dict(),
        "data": {
            "source": "TruthfulQA (correct vs incorrect reference answers)",
            "max_answers": a.max_answers,
            "train_pairs": len(train),
            "test_pairs": len(test),
            "train_questions": len(set(train.pair_groups)),
            "test_questions": len(set(test.pair_groups)),
            "split": f"by question, test_frac={a.test_frac}, seed={a.seed}",
        },
        "cached_layers": list(ps.feats.layers),
    }
    runs = Path(a.cache).parent
    out = Path(a.out)
    sections = set(a.sections.split(","))
    if out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        res = {**old, **res}

    def save() -> None:
        res["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(out.with_suffix(".json"), res)

    L = a.sae_layer
    tag = "" if a.seed == 0 else f"_seed{a.seed}"  # an SAE sees only its split's train questions
    sae_dir = runs / f"sae_L{L}{tag}"
    res["sae"] = train_sae(train, L, sae_dir, a.sae_latents, a.sae_k, a.sae_steps, test)
    log.info("SAE L%d: %s", L, res["sae"])
    save()

    sp = {"sae": str(sae_dir), "layer": L}
    if "main" in sections:
        run_main(res, sp, train, test, a, save)
    if "latents" in sections:
        run_latents(res, sp, train, lm, sae_dir, L, save)
    if "sweep" in sections:
        run_sweep(res, ps, train, test, runs, L, a, save)
    if "efficiency" in sections:
        run_efficiency(res, sp, train, test, a, save)
    if "ksweep" in sections:
        ks = {}
        for k in (8, 32, 128):
            ks[f"SparseRM K={k}"] = head_arm("sparserm", **sp, k=k)
            ks[f"random directions K={k}"] = head_arm("sparserm", **sp, k=k, features="random")
        res["k_sweep"] = evaluate_arms(train, test, ks, n_boot=a.n_boot, seed=a.seed)
        # random directions vary with their seed: 5 more draws per K
        res["k_sweep_random_seeds"] = {
            str(k): [
                evaluate_arms(
                    train,
                    test,
                    {"r": head_arm("sparserm", **sp, k=k, features="random", seed=s)},
                    n_boot=10,
                )["r"]["acc"]
                for s in range(1, 6)
            ]
            for k in (8, 32, 128)
        }
        save()
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    log.info("done in %.0fs", time.time() - t0)


def run_main(res, sp, train, test, a, save) -> None:
    arms = {
        "SparseRM (mean pool)": head_arm("sparserm", **sp, pool="mean"),
        "SparseRM (last token)": head_arm("sparserm", **sp, pool="last"),
        "ablation: raw SAE activations": head_arm("sparserm", **sp, features="raw"),
        "ablation: random directions": head_arm("sparserm", **sp, features="random"),
        "ablation: Bradley-Terry loss": head_arm("sparserm", **sp, loss="bt"),
        "ablation: BCE loss": head_arm("sparserm", **sp, loss="bce"),
        "DenseRM (same layer, mean)": head_arm("denserm", layer=sp["layer"]),
        "ELHSR pairwise (same layer, BCE)": head_arm(
            "elhsr", layers=[sp["layer"]], lr=1e-3, max_epochs=20
        ),
        "log-prob (length-normalised)": logprob_arm,
        "control: text-only TF-IDF": text_only_arm,
    }
    scores: dict[str, np.ndarray] = {}
    res["main"] = evaluate_arms(train, test, arms, n_boot=a.n_boot, seed=a.seed, scores=scores)
    best = "SparseRM (mean pool)"
    res["paired"] = {
        f"{best} - {other}": paired_difference(
            scores[best], scores[other], test, n_boot=a.n_boot, seed=a.seed
        )
        for other in arms
        if other != best
    }
    save()


def run_latents(res, sp, train, lm, sae_dir, L, save) -> None:
    """Interpretability: top-activating tokens of the most preferred / dispreferred latents."""
    from hsrm.heads import make_head
    from hsrm.prefs.data import pair_prompt_text
    from hsrm.prefs.evaluate import fit_head_on_pairs
    from hsrm.sae import SAE, top_activating_tokens

    head = fit_head_on_pairs(make_head("sparserm", **sp), train)
    sel = head.selected_latents()
    show = sel[:5] + sel[len(sel) // 2 : len(sel) // 2 + 5]
    texts = [
        pair_prompt_text(lm.tokenizer, train.prompts[i]) + train.texts[i]
        for i in range(0, len(train.texts), 8)
    ][:200]
    tops = top_activating_tokens(
        SAE.load(sae_dir), lm, texts, [s["latent"] for s in show], layer=L, n_top=4
    )
    res["latents"] = [dict(s, top=tops[s["latent"]]) for s in show]
    save()


def run_sweep(res, ps, train, test, runs, L, a, save) -> None:
    sweep = {}
    for lay in ps.feats.layers:
        if lay == 0:
            continue
        sweep[f"DenseRM L{lay}"] = head_arm("denserm", layer=lay)
    for lay in [int(x) for x in a.sweep_sae_layers.split(",") if x] + [L]:
        d = runs / f"sae_L{lay}" if a.seed == 0 else runs / f"sae_L{lay}_seed{a.seed}"
        if lay != L:
            res.setdefault("sweep_sae", {})[str(lay)] = train_sae(
                train, lay, d, a.sae_latents, a.sae_k, a.sae_steps // 2, test
            )
        sweep[f"SparseRM L{lay}"] = head_arm("sparserm", sae=str(d), layer=lay)
    res["layer_sweep"] = evaluate_arms(train, test, sweep, n_boot=a.n_boot, seed=a.seed)
    save()


def run_efficiency(res, sp, train, test, a, save) -> None:
    eff = {}
    for n in (100, 300, 1000):
        sub = first_n_pairs(train, n, a.seed)
        r = evaluate_arms(
            sub,
            test,
            {
                "SparseRM": head_arm("sparserm", **sp),
                "DenseRM": head_arm("denserm", layer=sp["layer"]),
                "ablation: random directions": head_arm("sparserm", **sp, features="random"),
                "control: text-only TF-IDF": text_only_arm,
            },
            n_boot=a.n_boot,
            seed=a.seed,
        )
        eff[str(n)] = {"n_pairs": len(sub), **r}
    res["data_efficiency"] = eff
    save()


def summarize_splits(out: Path) -> None:
    """Mean and range over split seeds of each main arm and of each paired difference."""
    files = [out.with_suffix(".json")] + sorted(out.parent.glob(out.name + "_seed*.json"))
    runs = [json.loads(f.read_text()) for f in files if f.exists()]
    runs = [r for r in runs if "main" in r]
    n = len(runs)
    lines = [
        f"# SparseRM over {n} train/test splits by question (seeds {', '.join(r['data']['split'].split('seed=')[1] for r in runs)})",
        "",
        "Each split trains its own SAE on its train questions. Pairwise accuracy on test questions: mean over "
        "splits (min, max); paired difference SparseRM - arm: mean over splits, and on how many splits "
        "its 95 % CI (bootstrap over questions) excludes 0 with SparseRM ahead / behind.",
        "",
        "| arm | accuracy, mean (min, max) | SparseRM - arm, mean | CI > 0 | CI < 0 |",
        "|---|---|---|---|---|",
    ]
    best = "SparseRM (mean pool)"
    for arm in runs[0]["main"]:
        acc = [r["main"][arm]["acc"] for r in runs]
        row = f"| {arm} | {np.mean(acc):.3f} ({min(acc):.3f}, {max(acc):.3f}) |"
        key = f"{best} - {arm}"
        if arm != best and all(key in r.get("paired", {}) for r in runs):
            d = [r["paired"][key] for r in runs]
            row += f" {np.mean([x['diff'] for x in d]):+.3f} | {sum(x['lo'] > 0 for x in d)} | {sum(x['hi'] < 0 for x in d)} |"
        else:
            row += " | | |"
        lines.append(row)
    atomic_write_text(out.parent / (out.name + "_splits.md"), "\n".join(lines) + "\n")


def markdown(res: dict) -> str:
    d = res["data"]
    s = res["sae"]
    lines = [
        "# SparseRM on TruthfulQA pairs (SmolLM2-135M-Instruct)",
        "",
        f"{d['train_pairs']} train pairs ({d['train_questions']} questions), {d['test_pairs']} test pairs "
        f"({d['test_questions']} questions), split {d['split']}. Pairwise accuracy on test questions, "
        "95 % bootstrap CI over questions. Generated by `benchmarks/bench_sparserm.py`.",
        "",
        f"SAE: TopK, layer {s['layer']}, {s['d_sae']} latents, k={s['k']}; fraction of variance explained "
        f"{s['train']['fve']:.3f} (train tokens), {s['test_questions']['fve']:.3f} (test questions' tokens); "
        f"dead latents {100 * s['train']['dead_share']:.1f} % (train), {100 * s['test_questions']['dead_share']:.1f} % (test).",
        "",
        "| arm | pairwise accuracy [95 % CI] |",
        "|---|---|",
    ]
    lines += [f"| {k} | {fmt(v)} |" for k, v in res["main"].items()]
    if "paired" in res:
        lines += [
            "",
            "Paired differences (same bootstrap resample of questions for both arms):",
            "",
            "| difference | accuracy difference [95 % CI] |",
            "|---|---|",
        ]
        lines += [
            f"| {k} | {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] |"
            for k, v in res["paired"].items()
        ]
    if "layer_sweep" in res:
        lines += ["", "## Layer sweep", "", "| arm | pairwise accuracy [95 % CI] |", "|---|---|"]
        if "sweep_sae" in res:
            lines[-2:-2] = [
                "SAEs per layer (fraction of variance explained on test questions' tokens, dead share): "
                + ", ".join(
                    f"L{k}: {v['test_questions']['fve']:.3f}, {100 * v['test_questions']['dead_share']:.1f} %"
                    for k, v in res["sweep_sae"].items()
                ),
                "",
            ]
        lines += [f"| {k} | {fmt(v)} |" for k, v in res["layer_sweep"].items()]
    if "k_sweep" in res:
        lines += [
            "",
            "## SAE directions vs random directions, by K (2K features)",
            "",
            "| arm | pairwise accuracy [95 % CI] |",
            "|---|---|",
        ]
        lines += [f"| {k} | {fmt(v)} |" for k, v in res["k_sweep"].items()]
        if "k_sweep_random_seeds" in res:
            lines += [
                "",
                "Random directions, 5 more seeds: "
                + "; ".join(
                    f"K={k}: mean {np.mean(v):.3f} (min {min(v):.3f}, max {max(v):.3f})"
                    for k, v in res["k_sweep_random_seeds"].items()
                ),
            ]
    if "data_efficiency" in res:
        arms = list(next(iter(res["data_efficiency"].values())).keys())
        arms = [x for x in arms if x != "n_pairs"]
        lines += [
            "",
            "## Data efficiency (train pairs from whole questions)",
            "",
            "| pairs | " + " | ".join(arms) + " |",
            "|---" * (len(arms) + 1) + "|",
        ]
        for r in res["data_efficiency"].values():
            lines.append(f"| {r['n_pairs']} | " + " | ".join(fmt(r[x]) for x in arms) + " |")
    if "latents" in res:
        lines += [
            "",
            "## Selected latents: top-activating tokens",
            "",
            "| latent | freq. diff (chosen - rejected) | top tokens (context → **token**) |",
            "|---|---|---|",
        ]
        for lt in res["latents"]:
            toks = (
                "; ".join(f"…{t['context'][-30:]!r} → **{t['token']!r}**" for t in lt["top"][:3])
                .replace("|", "\\|")
                .replace("\n", " ")
            )
            lines.append(f"| {lt['latent']} | {lt['freq_diff']:+.3f} | {toks} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
