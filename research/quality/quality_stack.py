"""A learned second-stage combiner ("stacker") of the demo's per-sample signals, measured honestly.

    PYTHONPATH=src nice -n 10 .venv/bin/python research/quality/quality_stack.py \\
        --train runs/demo/samples --val runs/val2 \\
        --fresh runs/demo/fresh_samples --cache /tmp/stack --threads 1
    # the same with ELHSR and the rank head reseeded (writes quality_stack_seed1/2.{json,md}):
    ... --head-seed 1;  ... --head-seed 2

``--train``: the demo's store (512 prompts x 16, task seed 0); ``--val``: a store of task seed 2 (192
prompts; ``research/quality/quality_votes.py`` says how it was sampled) on which every choice is made;
``--fresh``: the demo's fresh store (task seed 1, 128 prompts), a test only.

The stacker reads, per sample, signals the demo already computes: the within-prompt z-scores of
the three heads (ELHSR, rank, probe), the answer's vote share in its prompt, the ELHSR- and
rank-weighted vote shares (``weighted_vote_share`` with weights ``exp(z)``, divided by the prompt's
total weight), the answer prior's score, whether the sample has no answer, and the within-prompt
z-scores of mean log-prob and DeepConf confidence. The head scores (and answer prior) it trains on
are out of fold for the prompts it trains on (nested), so it learns how held-out head scores
behave, not in-sample ones:

* val / fresh: stacker fitted on the demo store's 3-split out-of-fold head scores (the demo's own
  ``cross_fit``), applied to heads fitted on the whole demo store;
* in store, for each of the demo's 3 prompt splits f: heads fitted on the other two splits a, b
  score f; the stacker trains on a (scored by the head fitted on b) and b (scored by the head
  fitted on a), so one head per single split serves every nested fit (3 extra fits per head).

Variants (chosen on ``--val`` by BoN@16 overall, ties to the simpler): loss pointwise (standardised
logistic regression) | pairwise (RankNet-style logistic loss on (right, wrong) pairs of a prompt) |
group (one row per distinct answer of a prompt, features averaged over the answer's samples,
pointwise logistic regression: a learned scoring of answer groups); one model for both families
(pooled) | one per family; C; and how the stacker's score selects: ``top`` (its best sample) or
``vote`` (a weighted vote, weights ``exp(z / T)`` of its within-prompt z-score). Only BoN@16 (N =
every sample of a prompt) is reported: the vote shares are computed over a prompt's 16 samples.

Writes research/quality/results/quality_stack.json and .md. Head scores are cached under ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm import metrics as M
from hsrm.baselines.controls import AnswerPriorScorer
from hsrm.bon.demo import (
    DEMO_ELHSR,
    PICKED,
    cross_fit,
    pick_by_family,
    picked_scores,
)
from hsrm.bon.report import bon_per_prompt, bon_report
from hsrm.bon.scorers import VOTE_SUFFIX, add_head_votes, store_scores, weighted_vote_share
from hsrm.heads import make_head
from hsrm.layer_spec import parse_layers
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
N = 16
HEADS = ("elhsr", "probe", "rank")
KEEP = ("random", "majority", "mean_logprob", "answer_prior", "deepconf_vote")


def head_specs(store: Store, seed: int = 0) -> dict[str, tuple[str, dict[str, Any]]]:
    """The demo's three heads, spelled as ``hsrm.bon.demo._demo`` does; ``seed`` != 0 reseeds the
    two heads trained by SGD (the probe is deterministic)."""
    layers = list(parse_layers("top:11", store.fingerprint.n_layers))
    extra = {"seed": seed} if seed else {}
    return {
        "elhsr": ("elhsr", {"layers": layers, **DEMO_ELHSR, **extra}),
        "probe": ("probe", {}),
        "rank": ("rank", {**extra}),
    }


def _fit_score(spec, st: Store, tr: np.ndarray, targets: list[tuple[Store, np.ndarray]]):
    arch, params = spec
    head = make_head(arch, **params).fit(st.features(tr), st.labels[tr], st.prompt_ids[tr])
    return [head.score(s.features(i)) for s, i in targets]


def head_cache(
    st: Store, va: Store, fr: Store, folds: int, cache: Path, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every head score the benchmark needs, computed once and saved to ``cache/heads.npz``
    (``heads_seed<seed>.npz`` for another head seed)."""
    path = cache / ("heads.npz" if seed == 0 else f"heads_seed{seed}.npz")
    if path.exists():
        return dict(np.load(path))
    cache.mkdir(parents=True, exist_ok=True)
    specs = head_specs(st, seed)
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    # the demo's out-of-fold scores (heads on two splits score the third) and its baselines
    oof, _ = cross_fit(st, folds, 0, specs, progress=False)
    for k, v in oof.items():
        out[f"oof/{k}"] = v
    out["seconds/cross_fit"] = np.array(time.perf_counter() - t0)
    fold = prompt_folds(st.prompt_ids, folds, 0)
    n = len(st)
    t0 = time.perf_counter()
    # nested: a head fitted on one split scores every other sample (the inner out-of-fold scores)
    for name, spec in specs.items():
        arr = np.full((folds, n), np.nan)
        for a in range(folds):
            tr, rest = np.flatnonzero(fold == a), np.flatnonzero(fold != a)
            arr[a, rest] = _fit_score(spec, st, tr, [(st, rest)])[0]
        out[f"single/{name}"] = arr
        print("single-split fits", name, flush=True)
    out["seconds/single"] = np.array(time.perf_counter() - t0)
    t0 = time.perf_counter()
    all_tr = np.arange(n)
    for name, spec in specs.items():
        sv, sf = _fit_score(spec, st, all_tr, [(va, np.arange(len(va))), (fr, np.arange(len(fr)))])
        out[f"val/{name}"], out[f"fresh/{name}"] = sv, sf
    out["seconds/full"] = np.array(time.perf_counter() - t0)
    for tag, s in (("train", st), ("val", va), ("fresh", fr)):
        free = store_scores(s, np.arange(len(s)), ["deepconf_lowest_group"])
        out[f"{tag}/deepconf_lowest_group"] = free["deepconf_lowest_group"]
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------- features


def _keys(st: Store, idx: np.ndarray) -> list[tuple]:
    r = st.records
    return [(r[i].get("qtype"), r[i]["extracted"]) for i in idx]


def features(
    heads: dict[str, np.ndarray],
    prior: np.ndarray,
    mlp: np.ndarray,
    conf: np.ndarray,
    ext: list[object],
    g: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """(n, F) per-sample stacker inputs; every one is computed within the sample's prompt."""
    n = len(g)
    cols: dict[str, np.ndarray] = {}
    for h in HEADS:
        cols[f"z_{h}"] = M.zscore_by_prompt(heads[h], g)
    cols["vote_share"] = M.vote_counts(ext, g, fraction=True)
    for h in ("elhsr", "rank"):
        w = np.exp(cols[f"z_{h}"])
        tot = np.zeros(n)
        for i in M.by_group(g).values():
            tot[i] = w[i].sum()
        cols[f"wvs_{h}"] = weighted_vote_share(ext, g, w) / tot
    cols["answer_prior"] = np.asarray(prior, float)
    cols["no_answer"] = np.array([e is None for e in ext], float)
    cols["z_mean_logprob"] = M.zscore_by_prompt(mlp, g)
    cols["z_deepconf"] = M.zscore_by_prompt(conf, g)
    return np.stack(list(cols.values()), 1), list(cols)


def group_ids(ext: list[object], g: np.ndarray) -> np.ndarray:
    """Index of each sample's (prompt, answer) group; no answer is one group per prompt."""
    ids: dict[tuple, int] = {}
    return np.array([ids.setdefault((str(p), repr(e)), len(ids)) for p, e in zip(g, ext)])


class Stacker:
    """Logistic regression over ``features``; ``loss``: pointwise | pairwise | group."""

    def __init__(self, loss: str, C: float):
        self.loss, self.C = loss, C

    def fit(self, F, y, g, gid):
        from sklearn.linear_model import LogisticRegression

        if self.loss == "group":
            F, y, _ = _group_rows(F, y, gid)
        self.mu_, self.sd_ = F.mean(0), F.std(0) + 1e-9
        Z = (F - self.mu_) / self.sd_
        if self.loss == "pairwise":
            diffs = []
            for r in M.by_group(g).values():
                pos, neg = r[y[r] == 1], r[y[r] == 0]
                if len(pos) and len(neg):
                    diffs.append((Z[pos][:, None] - Z[neg][None]).reshape(-1, Z.shape[1]))
            D = np.concatenate(diffs)
            X, t = np.concatenate([D, -D]), np.r_[np.ones(len(D)), np.zeros(len(D))]
            self.clf_ = LogisticRegression(C=self.C, max_iter=2000, fit_intercept=False)
            self.clf_.fit(X, t)
        else:
            self.clf_ = LogisticRegression(C=self.C, max_iter=2000).fit(Z, y)
        return self

    def score(self, F, gid):
        if self.loss == "group":
            Fg, _, inv = _group_rows(F, np.zeros(len(F)), gid)
            return self.clf_.decision_function((Fg - self.mu_) / self.sd_)[inv]
        return self.clf_.decision_function((F - self.mu_) / self.sd_)


def _group_rows(F, y, gid):
    """Mean features and label of every group; ``inv`` maps samples to their group's row."""
    _, inv = np.unique(gid, return_inverse=True)
    cnt = np.bincount(inv)
    Fg = np.stack([np.bincount(inv, weights=F[:, j]) / cnt for j in range(F.shape[1])], 1)
    yg = (np.bincount(inv, weights=y) / cnt > 0.5).astype(float)
    return Fg, yg, inv


def fit_score(var: dict[str, Any], tr: dict[str, Any], te: dict[str, Any]) -> np.ndarray:
    """Stacker of variant ``var`` fitted on table ``tr``, its score on table ``te`` (per-family
    models when ``var["family"] == "per_family"``)."""
    out = np.zeros(len(te["y"]))
    sel = FEATS[var["feats"]]
    cols = slice(None) if sel is None else [tr["names"].index(c) for c in sel]
    fams = sorted(set(te["fam"].tolist())) if var["family"] == "per_family" else [None]
    for f in fams:
        mtr = np.ones(len(tr["y"]), bool) if f is None else tr["fam"] == f
        mte = np.ones(len(te["y"]), bool) if f is None else te["fam"] == f
        s = Stacker(var["loss"], var["C"]).fit(
            tr["F"][mtr][:, cols], tr["y"][mtr], tr["g"][mtr], tr["gid"][mtr]
        )
        out[mte] = s.score(te["F"][mte][:, cols], te["gid"][mte])
    return out


def selector(var: dict[str, Any], s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Per-sample scores (``top``) or vote weights (``vote``) of the stacker's output."""
    return s if var["select"] == "top" else M.score_vote_weights(s, g, var["T"])


def bon16(var, s, t) -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for fam in (None, "arith", "compare"):
        m = np.ones(len(t["y"]), bool) if fam is None else t["fam"] == fam
        vote = None if var["select"] == "top" else (s[m], 1.0)
        per = bon_per_prompt("x", s[m], t["y"][m], t["g"][m], t["ext"][m], N, rng, vote=vote)
        out[fam or "all"] = float(np.mean(list(per.values())))
    return out


#: input subsets tried: everything; everything but the answer prior (fitted on fewer prompts in the
#: nested fits than at test); the heads and the vote shares only
FEATS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "no prior": (
        "z_elhsr", "z_probe", "z_rank", "vote_share", "wvs_elhsr", "wvs_rank", "no_answer",
        "z_mean_logprob", "z_deepconf",
    ),
    "heads+votes": (
        "z_elhsr", "z_probe", "z_rank", "vote_share", "wvs_elhsr", "wvs_rank", "no_answer",
    ),
}  # fmt: skip


def variants() -> list[dict[str, Any]]:
    out = []
    for feats in FEATS:
        for loss in ("pointwise", "pairwise", "group"):
            for family in ("pooled", "per_family"):
                for C in (0.01, 0.1, 1.0):
                    v = {"feats": feats, "loss": loss, "family": family, "C": C}
                    out.append({**v, "select": "top", "T": 0})
                    for T in (0.5, 1.0):
                        out.append({**v, "select": "vote", "T": T})
    return out


def vname(v: dict[str, Any]) -> str:
    sel = "top" if v["select"] == "top" else f"vote T={v['T']}"
    return f"{v['feats']}, {v['loss']}, {v['family']}, C={v['C']}, {sel}"


def table(st: Store, idx, heads, prior, conf) -> dict[str, Any]:
    r = st.records
    g = st.prompt_ids[idx]
    ext = [r[i]["extracted"] for i in idx]
    mlp = np.array([r[i]["mean_logprob"] for i in idx])
    F, names = features(heads, prior, mlp, conf, ext, g)
    return {
        "F": F,
        "names": names,
        "y": st.labels[idx].astype(float),
        "g": g,
        "gid": group_ids(ext, g),
        "fam": np.array([r[i]["family"] for i in idx]),
        "ext": np.asarray(ext, dtype=object),
    }


def prior_scores(st_tr: Store, tr: np.ndarray, st_te: Store, te: np.ndarray) -> np.ndarray:
    return AnswerPriorScorer().fit(_keys(st_tr, tr), st_tr.labels[tr]).score(_keys(st_te, te))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="runs/demo/samples")
    ap.add_argument("--val", default="runs/val2")
    ap.add_argument("--fresh", default="runs/demo/fresh_samples")
    ap.add_argument("--cache", default="/tmp/stack")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--head-seed",
        type=int,
        default=0,
        help="seed of ELHSR and the rank head (0: the demo's); != 0 writes quality_stack_seed<N>",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st, va, fr = Store(args.train), Store(args.val), Store(args.fresh)
    H = head_cache(st, va, fr, args.folds, Path(args.cache), args.head_seed)
    n = len(st)
    fold = prompt_folds(st.prompt_ids, args.folds, 0)
    all_tr = np.arange(n)
    conf_tr = H["train/deepconf_lowest_group"]

    # stacker training table for val / fresh: the demo's out-of-fold head scores and answer prior
    t_full = table(st, all_tr, {h: H[f"oof/{h}"] for h in HEADS}, H["oof/answer_prior"], conf_tr)
    evals = {}
    for tag, s in (("val", va), ("fresh", fr)):
        idx = np.arange(len(s))
        evals[tag] = table(
            s,
            idx,
            {h: H[f"{tag}/{h}"] for h in HEADS},
            prior_scores(st, all_tr, s, idx),
            H[f"{tag}/deepconf_lowest_group"],
        )

    # 1. choose on the validation store
    val_rows = []
    t0 = time.perf_counter()
    for v in variants():
        s = selector(v, fit_score(v, t_full, evals["val"]), evals["val"]["g"])
        val_rows.append({"variant": vname(v), **v, **bon16(v, s, evals["val"])})
    val_s = time.perf_counter() - t0
    best = max(range(len(val_rows)), key=lambda i: (val_rows[i]["all"], -i))
    chosen = {k: val_rows[best][k] for k in ("feats", "loss", "family", "C", "select", "T")}
    print("chosen on val:", vname(chosen), val_rows[best]["all"], flush=True)

    # the demo's own selectors on val / fresh: heads on the whole demo store, picked on its OOF
    oof = {h: H[f"oof/{h}"] for h in HEADS}
    fam_tr = np.array([r["family"] for r in st.records])
    ex_tr = [r["extracted"] for r in st.records]
    cands = [*HEADS, *(h + VOTE_SUFFIX for h in HEADS)]
    oofv = add_head_votes(oof, list(HEADS), st.prompt_ids)
    pick_all = pick_by_family(oofv, st.labels, st.prompt_ids, fam_tr, cands, ex_tr, N)

    def report(s: Store, idx, sc: dict[str, np.ndarray]) -> dict[str, Any]:
        r = s.records
        return bon_report(
            sc,
            s.labels[idx],
            s.prompt_ids[idx],
            extracted=[r[i]["extracted"] for i in idx],
            families=np.array([r[i]["family"] for i in idx]),
            ks=[N],
            n_boot=args.n_boot,
            votes=(PICKED,) + (("stack",) if chosen["select"] == "vote" else ()),
        )

    reports: dict[str, Any] = {}
    diffs: dict[str, Any] = {}

    def paired_diff(sc, y, g, ext) -> dict[str, Any]:
        """BoN@16 of the stacker minus the other selectors', per prompt, with a bootstrap CI
        over prompts (the same prompts resampled for both)."""
        rng = np.random.default_rng(0)
        ex = np.asarray(ext, dtype=object)

        def per(name: str) -> dict[object, float]:
            w = sc[name]
            vote = (w, 1.0) if name == PICKED or name.endswith(VOTE_SUFFIX) else None
            if name == "stack" and chosen["select"] == "vote":
                vote = (w, 1.0)
            return bon_per_prompt(name, w, y, g, ex, N, rng, vote=vote)

        ps = per("stack")
        out = {}
        for other in (PICKED, "elhsr_vote"):
            po = per(other)
            d = np.array([ps[k] - po[k] for k in ps])
            out[other] = {
                "mean": float(d.mean()),
                "ci": list(M.bootstrap_ci(d, args.n_boot)),
            }
        return out

    for tag, s in (("val", va), ("fresh", fr)):
        idx = np.arange(len(s))
        hs = {h: H[f"{tag}/{h}"] for h in HEADS}
        sc = add_head_votes(hs, list(HEADS), s.prompt_ids)
        fams = evals[tag]["fam"]
        sc[PICKED] = picked_scores(sc, fams, pick_all, s.prompt_ids)
        stk = fit_score(chosen, t_full, evals[tag])
        sc["stack"] = selector(chosen, stk, evals[tag]["g"])
        base = {
            "random": np.zeros(len(s)),
            "majority": np.zeros(len(s)),
            "mean_logprob": np.array([r["mean_logprob"] for r in s.records]),
            "answer_prior": evals[tag]["F"][:, evals[tag]["names"].index("answer_prior")],
            "deepconf_vote": H[f"{tag}/deepconf_lowest_group"],
        }
        reports[tag] = report(s, idx, {**base, **sc})
        diffs[tag] = paired_diff(sc, s.labels, s.prompt_ids, [r["extracted"] for r in s.records])

    # 2. in store, out of fold over the demo's splits, nested
    t0 = time.perf_counter()
    sc_in = add_head_votes({**oof}, list(HEADS), st.prompt_ids)
    sc_in[PICKED] = np.zeros(n)
    sc_in["stack"] = np.zeros(n)
    picks = []
    nested: list[tuple[dict[str, Any], dict[str, Any], np.ndarray]] = []
    for f in range(args.folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        a, b = sorted(set(range(args.folds)) - {f})
        # nested head scores of the training prompts: split a scored by the head fitted on b, and
        # vice versa; the answer prior likewise
        hs_tr = {}
        for h in HEADS:
            col = np.zeros(n)
            col[fold == a] = H[f"single/{h}"][b][fold == a]
            col[fold == b] = H[f"single/{h}"][a][fold == b]
            hs_tr[h] = col[tr]
        pr = np.zeros(n)
        for x, y_ in ((a, b), (b, a)):
            ix, iy = np.flatnonzero(fold == x), np.flatnonzero(fold == y_)
            pr[ix] = prior_scores(st, iy, st, ix)
        t_tr = table(st, tr, hs_tr, pr[tr], conf_tr[tr])
        t_te = table(st, te, {h: oof[h][te] for h in HEADS}, H["oof/answer_prior"][te], conf_tr[te])
        nested.append((t_tr, t_te, te))
        sc_in["stack"][te] = selector(chosen, fit_score(chosen, t_tr, t_te), t_te["g"])
        # the demo's picked, exactly as ``_demo`` chooses it
        trm, tem = fold != f, fold == f
        pick = pick_by_family(
            {c: sc_in[c][trm] for c in cands},
            st.labels[trm],
            st.prompt_ids[trm],
            fam_tr[trm],
            cands,
            [e for e, t in zip(ex_tr, trm) if t],
            N,
        )
        picks.append(pick)
        sc_in[PICKED][tem] = picked_scores(
            {c: sc_in[c][tem] for c in cands}, fam_tr[tem], pick, st.prompt_ids[tem]
        )
    stack_in_s = time.perf_counter() - t0
    base_in = {k: H[f"oof/{k}"] for k in KEEP if f"oof/{k}" in H}
    reports["in_store"] = report(st, all_tr, {**base_in, **sc_in})
    diffs["in_store"] = paired_diff(sc_in, st.labels, st.prompt_ids, ex_tr)

    # diagnostic only (nothing is chosen here): every variant in store and on the fresh store,
    # to tell "no variant helps" from "the validation store chose badly"
    t_all = {
        "y": st.labels.astype(float),
        "g": st.prompt_ids,
        "fam": fam_tr,
        "ext": np.asarray(ex_tr, dtype=object),
    }
    diag = []
    for v in variants():
        s_in = np.zeros(n)
        for t_tr, t_te, te in nested:
            s_in[te] = selector(v, fit_score(v, t_tr, t_te), t_te["g"])
        s_fr = selector(v, fit_score(v, t_full, evals["fresh"]), evals["fresh"]["g"])
        diag.append(
            {
                "variant": vname(v),
                "in_store": bon16(v, s_in, t_all),
                "fresh": bon16(v, s_fr, evals["fresh"]),
            }
        )

    out = {
        "machine": "2-core CPU box shared with other jobs (1 torch thread, nice)",
        "config": vars(args),
        "features": t_full["names"],
        "chosen": chosen,
        "chosen_name": vname(chosen),
        "val_variants": val_rows,
        "diagnostic_all_variants": diag,
        "in_store_picks": picks,
        "fresh_pick": pick_all,
        "seconds": {
            "cross_fit": float(H["seconds/cross_fit"]),
            "single_split_head_fits": float(H["seconds/single"]),
            "full_fits": float(H["seconds/full"]),
            "all_val_variants": val_s,
            "stack_in_store_3_splits": stack_in_s,
        },
        "reports": {k: _slim(v) for k, v in reports.items()},
        "stack_minus": diffs,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "quality_stack" + (f"_seed{args.head_seed}" if args.head_seed else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1, default=float))
    md = markdown(out)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


SHOW = (
    "stack",
    PICKED,
    "elhsr_vote",
    "elhsr",
    "rank_vote",
    "answer_prior",
    "mean_logprob",
    "majority",
    "deepconf_vote",
    "random",
)


def _slim(rep: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_prompts", "mean_accuracy", "pass_at_k", "bon", "bon_ci", "gap_closed")
    out = {k: rep[k] for k in keys}
    out["within_prompt_auroc"] = rep["within_prompt_auroc"]
    out["per_family"] = {f: {k: r[k] for k in keys} for f, r in rep["per_family"].items()}
    return out


def _rep_table(rep: dict[str, Any]) -> list[str]:
    k = str(N)
    fams = sorted(rep["per_family"])
    lines = [
        f"{rep['n_prompts']} prompts; mean accuracy {rep['mean_accuracy']:.3f}, pass@16 "
        f"{rep['pass_at_k'][k]:.3f}; 50% of the gap is "
        f"{(rep['mean_accuracy'] + rep['pass_at_k'][k]) / 2:.4f}",
        "",
        "| selector | BoN@16 [95% CI] | gap closed | "
        + " | ".join(f"{f} BoN@16 [95% CI] (gap)" for f in fams)
        + " |",
        "|---|---|---|" + "---|" * len(fams),
    ]
    for name in SHOW:
        if name not in rep["bon"]:
            continue
        cells = [
            f"{rep['bon'][name][k]:.3f} [{rep['bon_ci'][name][k][0]:.3f}, "
            f"{rep['bon_ci'][name][k][1]:.3f}]",
            f"{100 * rep['gap_closed'][name][k]:.0f}%",
        ]
        for f in fams:
            r = rep["per_family"][f]
            cells.append(
                f"{r['bon'][name][k]:.3f} [{r['bon_ci'][name][k][0]:.3f}, "
                f"{r['bon_ci'][name][k][1]:.3f}] ({100 * r['gap_closed'][name][k]:.0f}%)"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _summary(out: dict[str, Any]) -> list[str]:
    k = str(N)
    lines = []
    for tag, label in (("in_store", "in store"), ("fresh", "fresh store"), ("val", "val store")):
        rep, d = out["reports"][tag], out["stack_minus"][tag]
        half = (rep["mean_accuracy"] + rep["pass_at_k"][k]) / 2
        cells = [
            f"{o} {d[o]['mean']:+.3f} [{d[o]['ci'][0]:+.3f}, {d[o]['ci'][1]:+.3f}]"
            for o in (PICKED, "elhsr_vote")
        ]
        lines.append(
            f"- {label}: stack {rep['bon']['stack'][k]:.3f} "
            f"({100 * rep['gap_closed']['stack'][k]:.0f}% of the gap; 50% = {half:.4f}); "
            "stack minus " + ", minus ".join(cells) + " (paired over prompts, 95% CI)"
        )
    diag = out["diagnostic_all_variants"]
    best_in = max(diag, key=lambda r: r["in_store"]["all"])
    lines.append(
        f"- best of all {len(diag)} variants in store, chosen in hindsight on the test itself: "
        f"{best_in['in_store']['all']:.3f} ({best_in['variant']}); median variant "
        f"{np.median([r['in_store']['all'] for r in diag]):.3f} in store, "
        f"{np.median([r['fresh']['all'] for r in diag]):.3f} on the fresh store"
    )
    return lines


def markdown(out: dict[str, Any]) -> str:
    s = out["seconds"]
    md = [
        "# A learned second-stage combiner (`research/quality/quality_stack.py`)",
        "",
        f"Head seed {out['config']['head_seed']} (0 = the demo's). "
        "Stacker inputs (per sample, within its prompt): " + ", ".join(out["features"]) + ".",
        f"Chosen on the validation store (task seed 2): **{out['chosen_name']}**. `stack` below is "
        "that setting; `picked` and the head votes are the demo's, computed the same way (heads "
        "of the same splits). Machine: " + out["machine"] + ".",
        "",
        "## Summary",
        "",
        *_summary(out),
        "",
        "## In store, out of fold over the demo's 3 prompt splits (nested for the stacker)",
        "",
        *_rep_table(out["reports"]["in_store"]),
        "",
        "## Fresh store (task seed 1; heads and stacker fitted on the whole demo store)",
        "",
        *_rep_table(out["reports"]["fresh"]),
        "",
        "## Validation store (task seed 2; the choice was made here, so these are optimistic)",
        "",
        *_rep_table(out["reports"]["val"]),
        "",
        "## Every variant on the validation store (BoN@16)",
        "",
        "| variant | all | arith | compare |",
        "|---|---|---|---|",
    ]
    for r in sorted(out["val_variants"], key=lambda r: -r["all"]):
        md.append(f"| {r['variant']} | {r['all']:.3f} | {r['arith']:.3f} | {r['compare']:.3f} |")
    md += [
        "",
        "## Diagnostic: every variant in store (nested, out of fold) and on the fresh store",
        "",
        "Nothing is chosen here (that would choose on the test sets); it says whether any "
        "variant of this lever would have reached the goal. Sorted by the in-store number. "
        "BoN@16 all / arith / compare:",
        "",
        "| variant | in store | fresh |",
        "|---|---|---|",
    ]
    for r in sorted(out["diagnostic_all_variants"], key=lambda r: -r["in_store"]["all"]):
        a, b = r["in_store"], r["fresh"]
        md.append(
            f"| {r['variant']} | {a['all']:.3f} / {a['arith']:.3f} / {a['compare']:.3f} | "
            f"{b['all']:.3f} / {b['arith']:.3f} / {b['compare']:.3f} |"
        )
    md += [
        "",
        "## Cost (seconds on this machine)",
        "",
        f"- the demo's cross-fit (3 heads x 3 splits + baselines): {s['cross_fit']:.0f} s",
        f"- the nested fits the in-store stacker adds (3 heads x 1 split each): "
        f"{s['single_split_head_fits']:.0f} s",
        f"- the stacker itself over 3 splits (features, fits, picks): "
        f"{s['stack_in_store_3_splits']:.1f} s",
        f"- heads on the whole store, scored on val and fresh: {s['full_fits']:.0f} s",
        "",
    ]
    return "\n".join(md)


if __name__ == "__main__":
    main()
