"""The baselines that cost, side by side with hsrm heads, measured in one run on one machine.

1. Best-of-N on held-out prompts (k-fold cross-fitting by prompt: every prompt is scored by
   scorers trained on the other folds' prompts) for: ELHSR on captured states, ELHSR over
   full-vocabulary logits, ELHSR over API-style top-20 log-probs (trained and scored from a JSONL
   log in the OpenAI format), a LoRA text reward model from the same base model, the same model as
   a zero-shot judge, fusions (rank / min-max of ELHSR with the text RM and with the majority-vote
   count), and controls (text-only TF-IDF on the answer, majority vote, mean log-prob, random).
2. The cost table: trainable parameters, seconds and FLOPs per sample for scoring, and the cost
   of best-of-N (sampling N + everything scoring adds) as a ratio to plain sampling, for ELHSR with
   states captured during sampling and with a second teacher-forced pass (SWIFT's code: prompt +
   answer run again for every answer, ``bench_teacher_force.one_forward_per_answer``), the
   logits-only heads, the text RM and the judge. Timing runs interleave the variants on the same
   prompts with one torch thread; CPU seconds of this process are the primary measure (robust to
   other load on a shared machine), wall seconds are kept in the JSON. FLOPs are counted by torch.

    .venv/bin/python benchmarks/bench_cost.py            # ~35 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_cost.py --quick    # smoke test

Writes ``benchmarks/results/cost.json`` and ``cost.md``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_teacher_force import one_forward_per_answer  # SWIFT's second pass, as SWIFT runs it

from hsrm.apilog import read_api_log, write_api_log
from hsrm.baselines.controls import TextOnlyScorer
from hsrm.baselines.fusion import minmax_fusion, rank_fusion, vote_counts
from hsrm.baselines.judge import LLMJudge
from hsrm.baselines.text_rm import TextRewardModel, rm_text
from hsrm.bon.report import bon_report
from hsrm.capture import SampleConfig, parse_layers, sample_prompt
from hsrm.cost import CostRow, Timer, cost_markdown, count_flops, count_parameters
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.heads.logits import logit_features, toplogprob_features
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import load_model
from hsrm.report.bon import bon_markdown
from hsrm.tasks import get_task

log = logging.getLogger("bench_cost")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--n-prompts", type=int, default=160, help="prompts in all, cross-fitted by prompt"
    )
    ap.add_argument(
        "--folds", type=int, default=2, help="k-fold by prompt: every prompt tested once"
    )
    ap.add_argument("--families", default="arith,compare")
    ap.add_argument("--n", type=int, default=16, help="samples per prompt (N of best-of-N)")
    ap.add_argument("--layers", default="every:4")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument(
        "--timing-prompts", type=int, default=4, help="test prompts the cost table is timed on"
    )
    ap.add_argument("--repeat", type=int, default=2, help="timing repetitions (medians)")
    ap.add_argument(
        "--rm-lora-layers", type=int, default=4, help="text RM: LoRA on the top K blocks"
    )
    ap.add_argument("--rm-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_prompts, a.n, a.timing_prompts, a.repeat, a.rm_epochs = 8, 4, 1, 1, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.perf_counter()

    lm = load_model(a.model)
    fp = lm.fingerprint
    layers = parse_layers(a.layers, fp.n_layers)
    last = (fp.n_layers,)
    task = get_task("synthetic", n=a.n_prompts, families=a.families, seed=a.seed)
    prompts = task.prompts()
    cfg = SampleConfig(n=a.n, layers=a.layers, top_logprobs=a.top_k, seed=a.seed)

    # -- 1. sample with capture ----------------------------------------------------------------
    results, t0 = [], time.perf_counter()
    for i, p in enumerate(prompts):
        results.append(sample_prompt(lm, p, cfg, layers=layers))
        if (i + 1) % 16 == 0:
            log.info(
                "sampled %d/%d prompts (%.0f s)", i + 1, len(prompts), time.perf_counter() - t0
            )
    answers = [ans for r in results for ans in r.answers]
    groups = np.array([r.prompt.id for r in results for _ in r.answers])
    families = np.array([r.prompt.family for r in results for _ in r.answers])
    questions = [r.prompt.question for r in results for _ in r.answers]
    full_text = [r.prompt.prefill + ans.text for r in results for ans in r.answers]
    extracted = [task.extract(ans.text, r.prompt) for r in results for ans in r.answers]
    y = np.array(
        [
            int(task.check(e, r.prompt))
            for r, e in zip([r for r in results for _ in r.answers], extracted)
        ]
    )
    pid_order = [r.prompt.id for r in results]
    rng = np.random.default_rng(a.seed)
    fold_of = {pid: i % a.folds for i, pid in enumerate(rng.permutation(pid_order).tolist())}
    fold = np.array([fold_of[g] for g in groups])  # by prompt, never by sample
    log.info(
        "%d samples, accuracy %.3f; %d prompts in %d folds",
        len(y),
        y.mean(),
        len(pid_order),
        a.folds,
    )

    X = TokenFeatures.from_tensors(
        [ans.hidden for ans in answers], layers, fp, [ans.logprobs for ans in answers]
    )
    W = lm.unembedding()
    XL = logit_features(X.select_layers(last), W)
    with tempfile.TemporaryDirectory() as tmp:
        labels_pp = [[int(v) for v in y[groups == r.prompt.id]] for r in results]
        log_path = write_api_log(
            Path(tmp) / "api.jsonl", results, lm.tokenizer, fp.name, fp.revision, labels_pp
        )
        api = read_api_log(log_path, k=a.top_k)
        api_bytes = log_path.stat().st_size
    assert [s.label for s in api] == y.tolist()
    XK = toplogprob_features(api, k=a.top_k)

    # -- 2. cross-fit every scorer: trained on the other folds' prompts, scored on this fold's ----
    texts = [rm_text(q, ft) for q, ft in zip(questions, full_text)]
    N = len(y)
    scores: dict[str, np.ndarray] = {
        k: np.zeros(N)
        for k in (
            "elhsr",
            "elhsr_std_auroc_stop",
            "elhsr_logits",
            "elhsr_toplogprobs",
            "text_rm",
            "text_only_answer",
        )
    }
    fit_s: dict[str, list[float]] = {}
    heads: dict[str, object] = {}
    rm = None
    for f in range(a.folds):
        tr_idx, te_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        for name, arch, params, feats in (
            ("elhsr", "elhsr", {}, X),
            (
                "elhsr_std_auroc_stop",
                "elhsr",
                {"standardize": True, "early_stop": "within_auroc"},
                X,
            ),
            ("elhsr_logits", "elhsr_logits", {}, XL),
            ("elhsr_toplogprobs", "elhsr_toplogprobs", {}, XK),
        ):
            with Timer() as t:
                h = make_head(arch, **params).fit(feats.subset(tr_idx), y[tr_idx], groups[tr_idx])
            fit_s.setdefault(name, []).append(t.seconds)
            scores[name][te_idx] = h.score(feats.subset(te_idx))
            if f == 0:
                heads[name] = h
            log.info(
                "fold %d %s: fit %.1f s, %d params", f, name, t.seconds, count_parameters(h.net_)
            )
        with Timer() as t:
            r_f = TextRewardModel(
                lm, lora_layers=a.rm_lora_layers, epochs=a.rm_epochs, seed=a.seed
            ).fit([texts[i] for i in tr_idx], y[tr_idx])
        fit_s.setdefault("text_rm", []).append(t.seconds)
        log.info(
            "fold %d text RM: fit %.1f s on %d unique texts",
            f,
            t.seconds,
            len({texts[i] for i in tr_idx}),
        )
        scores["text_rm"][te_idx] = r_f.score([texts[i] for i in te_idx], dedupe=True)
        if f == 0:
            rm = r_f
        else:
            del r_f
        ans_only = TextOnlyScorer().fit([full_text[i] for i in tr_idx], y[tr_idx])
        scores["text_only_answer"][te_idx] = ans_only.score([full_text[i] for i in te_idx])

    judge = LLMJudge(lm)
    uniq = list(dict.fromkeys(zip(questions, full_text)))
    p_yes, lodds = judge.score_both([q for q, _ in uniq], [x for _, x in uniq])
    jm = {k: (p, o) for k, p, o in zip(uniq, p_yes, lodds)}
    scores["judge_p_yes"] = np.array([jm[k][0] for k in zip(questions, full_text)])
    scores["judge_yes_no_logodds"] = np.array([jm[k][1] for k in zip(questions, full_text)])
    log.info("judge scored %d unique answers", len(uniq))

    scores["mean_logprob"] = np.array(
        [float(x.logprobs.mean()) if len(x.token_ids) else -99.0 for x in answers]
    )
    scores["random"] = np.zeros(N)  # all tied: the exact expectation of a random pick
    scores["majority"] = np.zeros(N)
    votes = vote_counts(extracted, groups, fraction=True)
    scores["fuse_rank(elhsr,text_rm)"] = rank_fusion([scores["elhsr"], scores["text_rm"]], groups)
    scores["fuse_minmax(elhsr,text_rm)"] = minmax_fusion(
        [scores["elhsr"], scores["text_rm"]], groups
    )
    scores["fuse_rank(elhsr_logits,text_rm)"] = rank_fusion(
        [scores["elhsr_logits"], scores["text_rm"]], groups
    )
    scores["fuse_minmax(elhsr_logits,text_rm)"] = minmax_fusion(
        [scores["elhsr_logits"], scores["text_rm"]], groups
    )
    scores["fuse_rank(elhsr,votes)"] = rank_fusion([scores["elhsr"], votes], groups)
    scores["fuse_minmax(elhsr,votes)"] = minmax_fusion([scores["elhsr"], votes], groups)
    scores["fuse_minmax(elhsr_logits,votes)"] = minmax_fusion(
        [scores["elhsr_logits"], votes], groups
    )
    scores["fuse_minmax(text_rm,votes)"] = minmax_fusion([scores["text_rm"], votes], groups)

    rep = bon_report(
        scores, y, groups, extracted=extracted, families=families, n_boot=1000, seed=a.seed
    )

    # -- 3. the cost table ------------------------------------------------------------------------
    timing = [r.prompt for r in results if fold_of[r.prompt.id] == 0][: a.timing_prompts]
    plain_cfg = SampleConfig(n=a.n, layers=a.layers, seed=a.seed)
    topk_cfg = SampleConfig(n=a.n, layers=a.layers, seed=a.seed, top_logprobs=a.top_k)
    acc: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    flops: dict[str, float] = {}
    n_samples = 0
    tf_diff = 0.0

    def run(key, fn, *args, **kw):
        with Timer() as t:
            out = fn(*args, **kw)
        acc.setdefault(key, []).append(t.cpu_seconds)
        wall.setdefault(key, []).append(t.seconds)
        return out

    def flop(key, fn, *args, **kw):
        out, f = count_flops(fn, *args, **kw)
        flops[key] = flops.get(key, 0) + f
        return out

    # One untimed warm-up so allocator and kernel caches are hot for every variant alike.
    sample_prompt(lm, timing[0], plain_cfg, layers=layers, capture=False)
    for j, p in enumerate(timing):
        idx = np.flatnonzero(groups == p.id)
        texts_p = [texts[i] for i in idx]
        Xp, XLp = X.subset(idx), XL.subset(idx)
        n_samples += len(idx)
        for r in range(a.repeat):

            def key(k, j=j):  # per prompt; medians over repeats
                return f"{k}#{j}"

            run(key("sample_plain"), sample_prompt, lm, p, plain_cfg, layers=layers, capture=False)
            cap = run(
                key("sample_capture"), sample_prompt, lm, p, plain_cfg, layers=layers, capture=True
            )
            run(
                key("sample_capture_last"),
                sample_prompt,
                lm,
                p,
                plain_cfg,
                layers=last,
                capture=True,
            )
            top = run(
                key("sample_topk"), sample_prompt, lm, p, topk_cfg, layers=layers, capture=False
            )
            tf = run(
                key("teacher_force"),
                one_forward_per_answer,
                lm,
                p,
                [x.token_ids or [lm.tokenizer.eos_token_id] for x in cap.answers],
                layers,
            )
            Xc = TokenFeatures.from_tensors([x.hidden for x in cap.answers], layers, fp)
            run(key("score_elhsr"), heads["elhsr"].score, Xc)
            run(
                key("score_elhsr_logits"),
                lambda Xc=Xc: heads["elhsr_logits"].score(
                    logit_features(Xc.select_layers(last), W)
                ),
            )
            run(
                key("score_elhsr_toplogprobs"),
                lambda top=top: heads["elhsr_toplogprobs"].score(
                    toplogprob_features(top.answers, a.top_k, fp)
                ),
            )
            run(key("score_text_rm"), rm.score, texts_p, batch_size=a.n)
            run(
                key("score_judge"),
                judge.score_both,
                [questions[i] for i in idx],
                [full_text[i] for i in idx],
            )
            if r == 0:
                tf_diff = max(
                    tf_diff,
                    max(
                        float((x.hidden - z.hidden).abs().max())
                        for x, z in zip(cap.answers, tf)
                        if len(x.token_ids)
                    ),
                )
        flop("sample_plain", sample_prompt, lm, p, plain_cfg, layers=layers, capture=False)
        flop("sample_capture", sample_prompt, lm, p, plain_cfg, layers=layers, capture=True)
        flop("sample_capture_last", sample_prompt, lm, p, plain_cfg, layers=last, capture=True)
        flop("sample_topk", sample_prompt, lm, p, topk_cfg, layers=layers, capture=False)
        flop(
            "teacher_force",
            one_forward_per_answer,
            lm,
            p,
            [ans.token_ids or [lm.tokenizer.eos_token_id] for ans in cap.answers],
            layers,
        )
        flop("score_elhsr", heads["elhsr"].score, Xp)
        flop("score_elhsr_logits", lambda XLp=XLp: heads["elhsr_logits"].score(XLp))
        flop(
            "score_elhsr_toplogprobs",
            lambda top=top: heads["elhsr_toplogprobs"].score(
                toplogprob_features(top.answers, a.top_k, fp)
            ),
        )
        flop("score_text_rm", rm.score, texts_p, batch_size=a.n)
        flop(
            "score_judge",
            judge.score_both,
            [questions[i] for i in idx],
            [full_text[i] for i in idx],
        )

    def per_sample(name: str, src: dict[str, list[float]] = acc) -> float:
        # median over repeats per prompt, summed over prompts, per sample
        tot = sum(float(np.median(src[f"{name}#{j}"])) for j in range(len(timing)))
        return tot / n_samples

    S = {
        k: per_sample(k)
        for k in (
            "sample_plain",
            "sample_capture",
            "sample_capture_last",
            "sample_topk",
            "teacher_force",
            "score_elhsr",
            "score_elhsr_logits",
            "score_elhsr_toplogprobs",
            "score_text_rm",
            "score_judge",
        )
    }
    SW = {k: per_sample(k, wall) for k in S}
    F = {k: v / n_samples for k, v in flops.items()}

    def row(name, params, score_key, extra_keys, capture_key=None, notes=""):
        extra_s = sum(S[k] for k in extra_keys) + (
            S[capture_key] - S["sample_plain"] if capture_key else 0.0
        )
        extra_f = sum(F[k] for k in extra_keys) + (
            F[capture_key] - F["sample_plain"] if capture_key else 0.0
        )
        extra_w = sum(SW[k] for k in extra_keys) + (
            SW[capture_key] - SW["sample_plain"] if capture_key else 0.0
        )
        return CostRow(
            name,
            params,
            S[score_key],
            F[score_key],
            extra_s,
            extra_f,
            S["sample_plain"],
            F["sample_plain"],
            notes,
            {
                "bon_cost_ratio_wall_seconds": (SW["sample_plain"] + extra_w) / SW["sample_plain"],
                "score_wall_seconds_per_sample": SW[score_key],
            },
        )

    rows = [
        row(
            "elhsr (states captured while sampling)",
            count_parameters(heads["elhsr"].net_),
            "score_elhsr",
            ["score_elhsr"],
            "sample_capture",
            f"layers {a.layers}",
        ),
        row(
            "elhsr (second teacher-forced pass, SWIFT's code)",
            count_parameters(heads["elhsr"].net_),
            "score_elhsr",
            ["teacher_force", "score_elhsr"],
            None,
            "prompt + answer re-read",
        ),
        row(
            "elhsr_logits (full-vocab log-probs)",
            count_parameters(heads["elhsr_logits"].net_),
            "score_elhsr_logits",
            ["score_elhsr_logits"],
            "sample_capture_last",
            "logits recomputed from the last state",
        ),
        row(
            "elhsr_toplogprobs (API top-20)",
            count_parameters(heads["elhsr_toplogprobs"].net_),
            "score_elhsr_toplogprobs",
            ["score_elhsr_toplogprobs"],
            "sample_topk",
            "needs no model access",
        ),
        row(
            "text RM (LoRA, same base model)",
            rm.n_parameters(),
            "score_text_rm",
            ["score_text_rm"],
            None,
            f"{sum(p.numel() for p in rm.model_.parameters()):,} params run at inference",
        ),
        row(
            "LLM judge (same model, zero-shot)",
            0,
            "score_judge",
            ["score_judge"],
            None,
            f"{sum(p.numel() for p in lm.model.parameters()):,} params run",
        ),
    ]
    speedup_time = S["score_text_rm"] / S["score_elhsr"]
    speedup_flops = F["score_text_rm"] / F["score_elhsr"]
    bars = {
        "head_vs_text_rm_scoring_time_ratio": speedup_time,
        "head_vs_text_rm_scoring_flops_ratio": speedup_flops,
        "head_scoring_1000x_cheaper_in_time": bool(speedup_time >= 1000),
        "bon_with_head_cost_ratio_seconds": rows[0].bon_ratio_seconds,
        "bon_with_head_cost_ratio_flops": rows[0].bon_ratio_flops,
        "bon_with_head_within_1.02x": bool(rows[0].bon_ratio_seconds <= 1.02),
    }
    out = {
        "config": vars(a),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": a.threads,
            "processor": platform.processor(),
        },
        "model": fp.to_dict(),
        "n_samples": int(len(y)),
        "accuracy": float(y.mean()),
        "fit_seconds": fit_s,
        "folds": a.folds,
        "api_log_bytes": api_bytes,
        "teacher_forced_vs_captured_max_abs_diff": tf_diff,
        "bon": rep,
        "cost": [r.to_dict() for r in rows],
        "cost_raw_cpu_seconds_per_sample": S,
        "cost_raw_wall_seconds_per_sample": SW,
        "cost_raw_flops_per_sample": F,
        "bars": bars,
        "seconds": time.perf_counter() - t_start,
    }
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = "cost_quick" if a.quick else "cost"
    atomic_write_json(outdir / f"{stem}.json", out)
    md = [
        f"# Baselines that cost: best-of-{a.n} and the cost table ({fp.name}, synthetic {a.families})",
        "",
        f"`{' '.join(['benchmarks/bench_cost.py'] + (argv if argv is not None else sys.argv[1:]))}` -- one run, "
        f"{platform.processor() or platform.machine()}, {a.threads} torch thread(s), {out['seconds'] / 60:.1f} min.",
        f"{a.folds}-fold cross-fitting by prompt (every prompt scored by scorers that never saw it). Text RM: LoRA r=8 on q/v of the top "
        f"{a.rm_lora_layers} blocks, {a.rm_epochs} epochs. Controls: `text_only_answer` (TF-IDF on the "
        "answer text alone), `majority`, `mean_logprob`, `random`.",
        "",
        "## Best-of-N on held-out prompts",
        "",
        bon_markdown(rep),
        "## Cost per sample",
        "",
        f"Timed on {len(timing)} held-out prompts x {a.n} samples, {a.repeat} interleaved repetitions (medians), "
        "CPU seconds of this process (wall seconds in the JSON). FLOPs counted with torch's FlopCounterMode "
        "(matmuls and attention). BoN cost / sampling = (sampling N + everything the scorer adds) / sampling N "
        f"without capture. Plain sampling: {S['sample_plain']:.3e} s and {F['sample_plain']:.3e} FLOPs per sample.",
        "",
        cost_markdown(rows),
        f"Text RM scoring / ELHSR scoring: **{speedup_time:,.0f}x** in time, **{speedup_flops:,.0f}x** in FLOPs. "
        f"Best-of-{a.n} with ELHSR on captured states costs **{rows[0].bon_ratio_seconds:.3f}x** plain sampling in CPU time "
        f"({rows[0].extra['bon_cost_ratio_wall_seconds']:.3f}x wall, {rows[0].bon_ratio_flops:.4f}x FLOPs). "
        f"Teacher-forced and captured states agree to {tf_diff:.1e} (max abs).",
        "",
    ]
    atomic_write_text(outdir / f"{stem}.md", "\n".join(md))
    log.info(
        "wrote %s and %s (%.1f min)",
        outdir / f"{stem}.json",
        outdir / f"{stem}.md",
        out["seconds"] / 60,
    )
    print("\n".join(md))  # noqa: T201  (benchmark script output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
