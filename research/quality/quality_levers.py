"""Selection levers judged on prompts and contexts no fitting saw (`quality_levers.py`).

Three stores with per-prompt few-shot contexts: ``--train`` (the demo's, task seed 0), ``--val``
(task seed 2: hyperparameters and the second stage are chosen / fitted on it) and ``--fresh``
(task seed 1: a clean test, nothing is fitted or chosen on it). Every head is trained on
``--train``; "train+val" rows are trained on both (more contexts) with the settings chosen on val.

Levers: layer choice (single layers, bands) and L2 strength of the pooled probe; the loss
(pointwise / listwise / pairwise within a prompt, ``hsrm.bon.rank.RankProbe``) with early stopping on
val; a second stage over head score + vote share + mean log-prob + DeepConf fitted on val
(``hsrm.bon.rank.SecondStage``); training on train+val; ELHSR layer bands and weight decay
(``--elhsr``, slow). Selection rule: within a lever, the setting with the best val
within-prompt AUROC (less noisy than BoN@16 on 192 prompts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.bon.baselines import baseline_scores
from hsrm.bon.quality import PooledProbe
from hsrm.bon.rank import RankProbe, SecondStage, bon_all, cached_table, concat_tables
from hsrm.bon.report import bon_report
from hsrm.bon.scorers import VOTES, weighted_vote_share
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
FREE = (
    "majority",
    "mean_logprob",
    "self_certainty",
    "deepconf_lowest_group",
    "deepconf_vote",
    "neg_mean_entropy",
    "text_only",
    "answer_prior",
    "random",
)
BANDS: dict[str, Any] = {
    "0-9": list(range(0, 10)),
    "10-19": list(range(10, 20)),
    "20-30": list(range(20, 31)),
    "last8": "top:8",  # the last 8 hidden states
    "every:2": "every:2",
    "all": "all",
}


def _stores(args) -> tuple[Store, Store, Store]:
    return Store(args.train), Store(args.val), Store(args.fresh)


def _tables(args, st: tuple[Store, Store, Store]) -> tuple[dict, dict, dict]:
    cache = Path(args.cache)
    return tuple(cached_table(s, cache / n) for s, n in zip(st, ("train", "val", "fresh")))  # type: ignore[return-value]


def _free(st_tr: Store, st: Store) -> dict[str, np.ndarray]:
    """Training-free scorers and the controls (fitted on every --train answer)."""
    return baseline_scores(st, np.arange(len(st_tr)), np.arange(len(st)), train_store=st_tr)


def _row(t: dict, s: np.ndarray) -> dict[str, float]:
    return {"bon": bon_all(s, t["y"], t["g"]), "wauroc": M.within_prompt_auroc(s, t["y"], t["g"])}


def _full(st: Store, t: dict, scores: dict[str, np.ndarray], n_boot: int) -> dict[str, Any]:
    from bench_quality import summ  # type: ignore[import-not-found]

    rep = bon_report(
        scores,
        t["y"],
        t["g"],
        extracted=t["extracted"],
        families=t["family"],
        ks=[16],
        n_boot=n_boot,
    )
    return summ(rep, "16")


def levers(args) -> dict[str, Any]:
    t0 = time.perf_counter()
    st = _stores(args)
    T, V, F = _tables(args, st)
    sl, nl = list(st[0].layers), st[0].fingerprint.n_layers
    free_v, free_f = _free(st[0], st[1]), _free(st[0], st[2])
    sweep: list[dict[str, Any]] = []
    sv: dict[str, np.ndarray] = {}  # val scores of every setting
    sf: dict[str, np.ndarray] = {}  # fresh scores of every setting

    def add(lever: str, name: str, a: np.ndarray, b: np.ndarray, **extra: Any) -> None:
        sv[name], sf[name] = a, b
        if name == "majority":
            a, b = V["vote_share"], F["vote_share"]
        elif name in VOTES:  # DeepConf's weighted vote: the weighted share of the answer's votes
            a = weighted_vote_share(V["extracted"], V["g"], a)
            b = weighted_vote_share(F["extracted"], F["g"], b)
        rv, rf = _row(V, a), _row(F, b)
        sweep.append({"lever": lever, "name": name, "val": rv, "fresh": rf, **extra})
        print(
            f"{lever:12s} {name:44s} val {rv['bon']:.3f} {rv['wauroc']:.3f} | fresh "
            f"{rf['bon']:.3f} {rf['wauroc']:.3f}",
            flush=True,
        )

    for n in FREE:
        if n in free_v:
            add("baseline", n, free_v[n], free_f[n])
    # 1. layer choice and L2 of the pointwise pooled probe (sklearn logistic regression)
    for lay in list(range(0, 31, 2)):
        p = PooledProbe([lay], 0.01, False, sl, nl).fit(T["P"], T["y"], T["g"])
        add("layer", f"probe layer {lay} C=0.01", p.score(V["P"], None), p.score(F["P"], None))
    for band, lay in BANDS.items():
        for C in (0.001, 0.01, 0.1):
            p = PooledProbe(lay, C, False, sl, nl).fit(T["P"], T["y"], T["g"])
            add("band x C", f"probe {band} C={C}", p.score(V["P"], None), p.score(F["P"], None))
    # per-prompt centring on the best band of the sweep above
    best_band = max(
        (r for r in sweep if r["lever"] == "band x C"), key=lambda r: r["val"]["wauroc"]
    )
    band, C = best_band["name"].split()[1], float(best_band["name"].split("C=")[1])
    p = PooledProbe(BANDS[band], C, True, sl, nl).fit(T["P"], T["y"], T["g"])
    add(
        "centring",
        f"probe {band} C={C} centred per prompt",
        p.score(V["P"], V["g"]),
        p.score(F["P"], F["g"]),
    )
    # 2. the loss: pointwise / listwise / pairwise, early-stopped on val's within-prompt AUROC
    for band in ("last8", "20-30", "every:2"):
        for loss in ("pointwise", "listwise", "pairwise"):
            for l2 in (0.01, 0.1):
                h = RankProbe(
                    BANDS[band],
                    loss,
                    l2,
                    epochs=args.rank_epochs,
                    lr=1e-3,
                    store_layers=sl,
                    n_layers=nl,
                )
                h.fit(T["P"], T["y"], T["g"], val=(V["P"], V["y"], V["g"]))
                add(
                    "loss",
                    f"rank {band} {loss} l2={l2}",
                    h.score(V["P"]),
                    h.score(F["P"]),
                    best_epoch=h.best_epoch_,
                )
    # the registered head's fixed settings (what the demo runs; no early stopping)
    h = RankProbe(**_RANK_DEFAULT, store_layers=sl, n_layers=nl).fit(T["P"], T["y"], T["g"])
    add("default", "rank head (demo settings)", h.score(V["P"]), h.score(F["P"]))
    # 3. second stage on val over the head's score + free scores; in-val rows are cross-fitted
    best_rank = max((r for r in sweep if r["lever"] == "loss"), key=lambda r: r["val"]["wauroc"])
    hv, hf = sv[best_rank["name"]], sf[best_rank["name"]]
    for loss in ("pairwise", "pointwise"):
        for cols in (
            ("head", "vote_share", "mean_logprob", "deepconf_lowest_group"),
            ("head", "vote_share"),
        ):
            s2 = SecondStage(cols, loss=loss).fit(V, hv)
            add(
                "2nd stage",
                f"2nd stage {loss} [{', '.join(cols)}]",
                _crossfit_stage2(V, hv, cols, loss),
                s2.score(F, hf),
                coef=s2.clf_.coef_[0].round(3).tolist(),
                head=best_rank["name"],
            )
    cols = ("vote_share", "mean_logprob", "deepconf_lowest_group")
    add(
        "2nd stage",
        "2nd stage pairwise, free scores only",
        _crossfit_stage2(V, None, cols, "pairwise"),
        SecondStage(cols).fit(V).score(F),
    )
    # 4. more contexts: train+val with the settings chosen on val (val rows are in-sample)
    TV = concat_tables(T, V, tags=["train", "val"])
    band, loss, l2 = best_rank["name"].split()[1:4]
    h = RankProbe(
        BANDS[band],
        loss,
        float(l2[3:]),
        epochs=best_rank["best_epoch"],
        lr=1e-3,
        store_layers=sl,
        n_layers=nl,
    ).fit(TV["P"], TV["y"], TV["g"])
    add("train+val", f"rank {band} {loss} {l2}, train+val", h.score(V["P"]), h.score(F["P"]))
    p = PooledProbe(BANDS[best_band["name"].split()[1]], C, False, sl, nl).fit(
        TV["P"], TV["y"], TV["g"]
    )
    add(
        "train+val", f"{best_band['name']}, train+val", p.score(V["P"], None), p.score(F["P"], None)
    )

    # full reports (CIs, per family, gap closed) of each lever's val-chosen setting + baselines
    chosen = {}
    for lever in ("layer", "band x C", "centring", "loss", "default", "2nd stage", "train+val"):
        rows = [r for r in sweep if r["lever"] == lever]
        if lever == "train+val":
            for r in rows:
                chosen[r["name"]] = r["name"]
            continue
        best = max(rows, key=lambda r: r["val"]["wauroc"])
        chosen[f"{lever}: {best['name']}"] = best["name"]
    full = {}
    for tag, st_, t_, s_, free in (("val", st[1], V, sv, free_v), ("fresh", st[2], F, sf, free_f)):
        sc = {k: free[k] for k in FREE if k in free}
        sc.update({label: s_[name] for label, name in chosen.items()})
        full[tag] = _full(st_, t_, sc, args.n_boot)
    return {
        "stores": {
            "train": args.train,
            "val": args.val,
            "fresh": args.fresh,
            "n_prompts": {
                k: int(len(np.unique(t["g"]))) for k, t in (("train", T), ("val", V), ("fresh", F))
            },
        },
        "selection_rule": "per lever, best val within-prompt AUROC",
        "sweep": sweep,
        "chosen": chosen,
        "full": full,
        "seconds": time.perf_counter() - t0,
    }


#: the settings ``hsrm.heads.rank`` uses by default (chosen on the val store, see levers())
from hsrm.heads.rank import RANK_DEFAULT as _RANK_DEFAULT  # noqa: E402


def _crossfit_stage2(
    V: dict, head: np.ndarray | None, cols, loss: str, folds: int = 5
) -> np.ndarray:
    """Second-stage scores of val's answers, each fitted on the other val prompts (by prompt)."""
    from hsrm.splits import prompt_folds

    fold = prompt_folds(V["g"], folds, 0)
    out = np.zeros(len(V["y"]))
    for f in range(folds):
        a, b = np.flatnonzero(fold != f), np.flatnonzero(fold == f)

        def sub(idx):
            return {
                k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx])
                for k, v in V.items()
            }

        s2 = SecondStage(cols, loss=loss).fit(sub(a), None if head is None else head[a])
        out[b] = s2.score(sub(b), None if head is None else head[b])
    return out


def levers_elhsr(args) -> dict[str, Any]:
    """ELHSR (the demo's settings) with other layer bands / weight decay, trained on --train.

    ELHSR's fit depends on its seed (initialisation and its internal early-stopping split), and
    that spread is as large as the differences between settings, so the main settings run with
    ``--elhsr-seeds`` seeds: the mean over seeds picks the setting (val within-prompt AUROC), and
    the full reports (CIs, per family, baselines and controls) show the seed ensemble (within-prompt
    z-scores summed over seeds) of the chosen setting and of the demo's."""
    from hsrm.bon.demo import DEMO_ELHSR
    from hsrm.heads import make_head
    from hsrm.metrics import zscore_by_prompt

    st = _stores(args)
    T, V, F = _tables(args, st)
    band = lambda a, b: {"layers": list(range(a, b + 1))}  # noqa: E731
    seeds = list(range(args.elhsr_seeds))
    settings = {
        "all (demo)": ({}, seeds),
        "16-30": (band(16, 30), seeds),
        "20-30 (top:11)": (band(20, 30), seeds),
        "last8 (23-30)": (band(23, 30), [0]),
        "18-30": (band(18, 30), [0]),
        "22-30": (band(22, 30), [0]),
        "20-27": (band(20, 27), [0]),
        "10-19": (band(10, 19), [0]),
        "all, weight decay 1e-2": ({"weight_decay": 1e-2}, [0]),
    }
    out: dict[str, Any] = {"settings": {}}
    ens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (kw, sds) in settings.items():
        runs, zv, zf = [], 0.0, 0.0
        for seed in sds:
            t0 = time.perf_counter()
            h = make_head("elhsr", **{**DEMO_ELHSR, **kw, "seed": seed}).fit(
                st[0].features(), st[0].labels, st[0].prompt_ids
            )
            r: dict[str, Any] = {"seed": seed, "fit_s": time.perf_counter() - t0}
            v, f = h.score(st[1].features()), h.score(st[2].features())
            r["val"], r["fresh"] = _row(V, v), _row(F, f)
            zv = zv + zscore_by_prompt(v, V["g"])
            zf = zf + zscore_by_prompt(f, F["g"])
            runs.append(r)
            print(name, r, flush=True)
        ens[name] = (np.asarray(zv), np.asarray(zf))
        mean = {
            t: {m: float(np.mean([r[t][m] for r in runs])) for m in ("bon", "wauroc")}
            for t in ("val", "fresh")
        }
        out["settings"][name] = {"params": kw, "seeds": runs, "mean": mean}
        if len(sds) > 1:
            out["settings"][name]["ensemble"] = {
                "val": _row(V, ens[name][0]),
                "fresh": _row(F, ens[name][1]),
            }
    multi = [n for n, (_, sds) in settings.items() if len(sds) > 1]
    best = max(multi, key=lambda n: out["settings"][n]["mean"]["val"]["wauroc"])
    out["chosen"] = best
    free_v, free_f = _free(st[0], st[1]), _free(st[0], st[2])
    out["full"] = {}
    for tag, s, t, free, j in (("val", st[1], V, free_v, 0), ("fresh", st[2], F, free_f, 1)):
        sc_ = {k: free[k] for k in FREE if k in free}
        sc_[f"elhsr {best}, {len(seeds)}-seed ensemble"] = ens[best][j]
        sc_[f"elhsr all (demo), {len(seeds)}-seed ensemble"] = ens["all (demo)"][j]
        out["full"][tag] = _full(s, t, sc_, args.n_boot)
    return out


def sweep_md(rep: dict[str, Any]) -> str:
    lines = [
        "### Lever sweep: BoN@16 and within-prompt AUROC on val (selection) and fresh (test)",
        "",
        f"Prompts: {rep['stores']['n_prompts']}. Selection rule: {rep['selection_rule']}.",
        "",
        "| lever | setting | val BoN@16 | val wAUROC | fresh BoN@16 | fresh wAUROC |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["sweep"]:
        lines.append(
            f"| {r['lever']} | {r['name']} | {r['val']['bon']:.3f} | "
            f"{r['val']['wauroc']:.3f} | {r['fresh']['bon']:.3f} | "
            f"{r['fresh']['wauroc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def elhsr_md(out: dict[str, Any]) -> str:
    from bench_quality import table_md  # type: ignore[import-not-found]

    lines = [
        "### ELHSR layer bands and weight decay (trained on --train), per seed",
        "",
        "| setting | seed | fit s | val BoN@16 | val wAUROC | fresh BoN@16 | fresh wAUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in out["settings"].items():
        rows = [(str(x["seed"]), f"{x['fit_s']:.0f}", x) for x in r["seeds"]]
        if len(r["seeds"]) > 1:
            rows.append(("mean", "", r["mean"]))
            rows.append(("ensemble", "", r["ensemble"]))
        for seed, fit, x in rows:
            lines.append(
                f"| {n} | {seed} | {fit} | {x['val']['bon']:.3f} | {x['val']['wauroc']:.3f}"
                f" | {x['fresh']['bon']:.3f} | {x['fresh']['wauroc']:.3f} |"
            )
    lines += [
        "",
        f"Chosen on val (best mean within-prompt AUROC over seeds): **{out['chosen']}**.",
        "",
    ]
    lines.append(table_md("Validation store (task seed 2)", out["full"]["val"]))
    lines.append(
        table_md("Fresh store (task seed 1; nothing fitted or chosen here)", out["full"]["fresh"])
    )
    return "\n".join(lines) + "\n"


def levers_more(args) -> dict[str, Any]:
    """More contexts: ELHSR (all layers, and 20-30) trained on --train + --val (512 prompts) vs
    on --train alone, over ``--elhsr-seeds`` seeds, tested on --fresh only (val is in-sample)."""
    from hsrm.bon.demo import DEMO_ELHSR
    from hsrm.bon.rank import concat_features
    from hsrm.heads import make_head
    from hsrm.metrics import zscore_by_prompt

    st = _stores(args)
    F = {"y": st[2].labels, "g": st[2].prompt_ids}
    X = concat_features([st[0], st[1]])
    y = np.r_[st[0].labels, st[1].labels]
    g = np.r_[
        np.char.add("train/", st[0].prompt_ids.astype(str)),
        np.char.add("val/", st[1].prompt_ids.astype(str)),
    ]
    out: dict[str, Any] = {"settings": {}}
    ens = {}
    for name, kw in (("all, train+val", {}), ("20-30, train+val", {"layers": list(range(20, 31))})):
        runs, zf = [], 0.0
        for seed in range(args.elhsr_seeds):
            t0 = time.perf_counter()
            h = make_head("elhsr", **{**DEMO_ELHSR, **kw, "seed": seed}).fit(X, y, g)
            f = h.score(st[2].features())
            zf = zf + zscore_by_prompt(f, F["g"])
            runs.append({"seed": seed, "fit_s": time.perf_counter() - t0, "fresh": _row(F, f)})
            print(name, runs[-1], flush=True)
        ens[name] = np.asarray(zf)
        out["settings"][name] = {
            "seeds": runs,
            "mean": {m: float(np.mean([r["fresh"][m] for r in runs])) for m in ("bon", "wauroc")},
            "ensemble": _row(F, ens[name]),
        }
    T = _tables(args, st)[2]
    sc = {k: v for k, v in _free(st[0], st[2]).items() if k in FREE}
    sc.update({f"elhsr {n}, {args.elhsr_seeds}-seed ensemble": v for n, v in ens.items()})
    out["full_fresh"] = _full(st[2], T, sc, args.n_boot)
    return out


def more_md(out: dict[str, Any]) -> str:
    from bench_quality import table_md  # type: ignore[import-not-found]

    lines = [
        "### ELHSR trained on train + val (512 prompts), tested on fresh",
        "",
        "| setting | seed | fit s | fresh BoN@16 | fresh wAUROC |",
        "|---|---|---|---|---|",
    ]
    for n, r in out["settings"].items():
        for x in r["seeds"]:
            lines.append(
                f"| {n} | {x['seed']} | {x['fit_s']:.0f} | {x['fresh']['bon']:.3f} | "
                f"{x['fresh']['wauroc']:.3f} |"
            )
        lines.append(f"| {n} | mean |  | {r['mean']['bon']:.3f} | {r['mean']['wauroc']:.3f} |")
        e = r["ensemble"]
        lines.append(f"| {n} | ensemble |  | {e['bon']:.3f} | {e['wauroc']:.3f} |")
    lines.append("")
    lines.append(
        table_md("Fresh store (task seed 1; nothing fitted or chosen here)", out["full_fresh"])
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    """``quality_levers.py [--elhsr | --more]``: the lever sweep, ELHSR's bands and decay, or ELHSR
    trained on train + val. Writes results/quality_levers[_elhsr|_more].json and .md."""
    import json

    import torch
    from bench_quality import arg_parser, table_md  # type: ignore[import-not-found]

    ap = arg_parser()
    ap.add_argument("--elhsr", action="store_true", help="only ELHSR's layer/decay sweep")
    ap.add_argument("--more", action="store_true", help="only ELHSR trained on train+val")
    ap.add_argument("--val", default="runs/val", help="the validation store")
    ap.add_argument("--cache", default="runs/cache", help="pooled-state caches")
    ap.add_argument("--rank-epochs", type=int, default=200)
    ap.add_argument("--elhsr-seeds", type=int, default=3, help="--elhsr: seeds per setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tag = args.tag if args.tag != "quality" else "quality_levers"
    if args.more:
        out = levers_more(args)
        tag += "_more"
        md = ["# More contexts (`quality_levers.py --more`)", "", more_md(out)]
    elif args.elhsr:
        out = levers_elhsr(args)
        tag += "_elhsr"
        md = ["# ELHSR levers (`quality_levers.py --elhsr`)", "", elhsr_md(out)]
    else:
        out = levers(args)
        md = ["# Selection levers (`quality_levers.py`)", "", sweep_md(out)]
        md.append(
            "Rows marked `train+val` are trained on the validation store too: their val numbers"
            " are in-sample, only their fresh numbers are a test.\n"
        )
        for t, title in (
            ("val", "validation store (task seed 2; settings chosen here)"),
            ("fresh", "fresh store (task seed 1; nothing fitted or chosen here)"),
        ):
            md.append(table_md(f"Each lever's val-chosen setting on the {title}", out["full"][t]))
    out = {"machine": "2-core CPU box shared with other jobs", "config": vars(args), **out}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{tag}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
