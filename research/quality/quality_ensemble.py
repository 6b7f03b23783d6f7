"""ELHSR seed ensembles and per-family heads: chosen on a validation store, then tested in store
(out of fold, 3 partitions) and on the demo's fresh seed.

    PYTHONPATH=src .venv/bin/python research/quality/quality_ensemble.py \\
        --train runs/demo/samples --val runs/val2 --fresh runs/demo/fresh_samples [--threads 2]

Why: the demo's in-store number (``picked`` 0.473, 34% of the gap) rests on one ELHSR fit per
split, and the three splits' fits differ a lot (within-prompt AUROC 0.668 / 0.830 / 0.794): one
seed's fit on 341 prompts is noisy. An ensemble of seeds (within-prompt z-scores summed) averages
that noise away; a head per family lets ``arith`` have weights of its own.

1. Validation (task seed 2, never reported as a result): every variant fitted on all of
   ``--train`` and scored on ``--val``; BoN@16 of the head and of its vote, per family.
2. In store: the variants out of fold over 3 prompt splits, for 3 partitions of the prompts, and
   the demo's ``picked`` selector built from them (chosen per split on the other splits).
3. Fresh seed: fitted on all of ``--train``, ``picked`` chosen on the store's out-of-fold scores.

``--folds 5``: the same with 5 splits, so each split's heads train on 410 prompts, not 341.
``--extra STORE``: in store only, with every prompt of STORE (another task seed) added to each
split's training prompts; ELHSR seeds 0-2 and the demo's other heads. Together these measure how
the in-store number grows with the training prompts (research/quality/HISTORY.md, fifth session).

Out-of-fold scores are cached in ``--cache`` (a rerun only reports). Writes
research/quality/results/TAG.json and .md (``--tag``, default quality_ensemble).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.bon.demo import (
    DEMO_ELHSR,
    pick_by_family,
    picked_out_of_fold,
    picked_scores,
)
from hsrm.bon.rank import concat_features
from hsrm.bon.report import bon_per_prompt
from hsrm.bon.scorers import VOTE_SUFFIX, add_head_votes, vote_keep
from hsrm.features import TokenFeatures
from hsrm.heads import make_head
from hsrm.layer_spec import parse_layers
from hsrm.metrics import gap_closed, pass_at_k, within_prompt_auroc, zscore_by_prompt
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
N = 16
SEEDS = (0, 1, 2, 3, 4)


def _fams(st: Store, idx: np.ndarray) -> np.ndarray:
    return np.array([st.records[i]["family"] for i in idx])


def fit_scores(
    F: TokenFeatures,
    y: np.ndarray,
    g: np.ndarray,
    fams: np.ndarray,
    tr: np.ndarray,
    targets: list[tuple[TokenFeatures, np.ndarray]],
    layers: list[int],
    seeds: tuple[int, ...] = SEEDS,
    per_family: bool = True,
) -> dict[str, list[np.ndarray]]:
    """Base scores of every variant, fitted on samples ``tr`` of ``F`` (labels ``y``, prompts
    ``g``, families ``fams``), for each target (its features and families).

    ``elhsr_s{k}``: the demo's ELHSR with seed k, one head for both families;
    ``elhsr_fam_s{k}``: one such head per family, fitted on that family's samples only;
    ``probe``, ``rank``: the demo's other two heads."""
    out: dict[str, list[np.ndarray]] = {}

    def add(name: str, arch: str, params: dict[str, Any], by_family: bool = False) -> None:
        res = [np.zeros(len(X)) for X, _ in targets]
        groups = sorted(set(fams[tr].tolist())) if by_family else [None]
        for fam in groups:
            i = tr if fam is None else tr[fams[tr] == fam]
            h = make_head(arch, **params).fit(F.subset(i), y[i], g[i])
            for j, (X, tf) in enumerate(targets):
                m = np.ones(len(X), bool) if fam is None else tf == fam
                if m.any():
                    res[j][m] = h.score(X.subset(np.flatnonzero(m)))
        out[name] = res

    add("probe", "probe", {})
    add("rank", "rank", {})
    for s in seeds:
        p = {"layers": layers, **DEMO_ELHSR, "seed": s}
        add(f"elhsr_s{s}", "elhsr", p)
        if per_family:
            add(f"elhsr_fam_s{s}", "elhsr", p, by_family=True)
    return out


def oof_cached(fp: Path, fold: np.ndarray, fit) -> dict[str, np.ndarray]:
    """Out-of-fold scores of every variant over the splits ``fold`` (one per sample of the
    store), ``fit(train, test) -> {name: [scores of test]}`` for each split; cached in ``fp``."""
    if not fp.exists():
        t0 = time.perf_counter()
        acc: dict[str, np.ndarray] = {}
        for f in range(int(fold.max()) + 1):
            tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            for k, v in fit(tr, te).items():
                acc.setdefault(k, np.zeros(len(fold)))[te] = v[0]
            print(f"{fp.stem} split {f}: {time.perf_counter() - t0:.0f} s", flush=True)
        np.savez(fp, **acc)
    zz = np.load(fp)
    return {k: zz[k] for k in zz.files}


def variants(base: dict[str, np.ndarray], g: np.ndarray) -> dict[str, np.ndarray]:
    """The scorers compared: single fits (seed 0 is the demo's) and seed ensembles, the sum of
    the members' within-prompt z-scores."""
    z = {k: zscore_by_prompt(v, g) for k, v in base.items()}
    out = {"probe": base["probe"], "rank": base["rank"]}
    for fam in ("", "fam_"):
        if f"elhsr_{fam}s0" not in base:
            continue
        out[f"elhsr_{fam}s0"] = base[f"elhsr_{fam}s0"]
        for n in (3, 5):
            if all(f"elhsr_{fam}s{s}" in base for s in SEEDS[:n]):
                out[f"elhsr_{fam}ens{n}"] = sum(z[f"elhsr_{fam}s{s}"] for s in SEEDS[:n])
    return out


def table(st: Store, idx: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """BoN@16 (overall, per family) and within-prompt AUROC of every scorer; votes by name."""
    y, g = st.labels[idx], st.prompt_ids[idx]
    fams = _fams(st, idx)
    ex = np.asarray([st.records[i]["extracted"] for i in idx], dtype=object)
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for name, s in scores.items():
        keep = vote_keep(name)
        row: dict[str, float] = {}
        for fam in (None, *sorted(set(fams.tolist()))):
            m = np.ones(len(y), bool) if fam is None else fams == fam
            vote = None if keep is None else (s[m], keep)
            per = bon_per_prompt(name, s[m], y[m], g[m], ex[m], N, rng, vote=vote)
            row[fam or "all"] = float(np.mean(list(per.values())))
        row["wauroc"] = float(within_prompt_auroc(s, y, g))
        out[name] = row
    # random and the oracle, for the gap
    acc = [float(y[g == p].mean()) for p in np.unique(g)]
    pk = [pass_at_k(int((g == p).sum()), int(y[g == p].sum()), N) for p in np.unique(g)]
    out["_ref"] = {"random": float(np.mean(acc)), "pass@16": float(np.mean(pk))}
    return out


def candidates(head: str) -> list[str]:
    """The demo's pick candidates with ``head`` in ELHSR's place."""
    hs = [head, "probe", "rank"]
    return [*hs, *(h + VOTE_SUFFIX for h in hs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="runs/demo/samples")
    ap.add_argument("--val", default="runs/val2")
    ap.add_argument("--fresh", default="runs/demo/fresh_samples")
    ap.add_argument("--cache", default="runs/cache_ensemble")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tag", default="quality_ensemble")
    ap.add_argument(
        "--extra",
        default="",
        help="a store of another task seed added to every split's training prompts (in store "
        "only: ELHSR seeds 0-2 and the demo's other heads; tests whether more training prompts "
        "lift the in-store number)",
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    st, val, fresh = Store(a.train), Store(a.val), Store(a.fresh)
    layers = list(parse_layers("top:11", st.fingerprint.n_layers))
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    every = np.arange(len(st))
    g = st.prompt_ids
    fams = _fams(st, every)
    ex = [r["extracted"] for r in st.records]
    out: dict[str, Any] = {"train": a.train, "val": a.val, "fresh": a.fresh, "layers": layers}
    F = st.features()
    if a.extra:
        return _extra(a, st, Store(a.extra), layers, cache)

    # 1 + 3: fitted on all of the store, scored on val and on the fresh seed
    f_all = cache / "all.npz"
    if not f_all.exists():
        t0 = time.perf_counter()
        targets = [(val.features(), _fams(val, np.arange(len(val)))),
                   (fresh.features(), _fams(fresh, np.arange(len(fresh))))]  # fmt: skip
        res = fit_scores(F, st.labels, g, fams, every, targets, layers)
        np.savez(f_all, **{f"{k}|{j}": v[j] for k, v in res.items() for j in range(2)})
        print(f"fits on all prompts: {time.perf_counter() - t0:.0f} s", flush=True)
    z = np.load(f_all)
    base_val = {k.split("|")[0]: z[k] for k in z.files if k.endswith("|0")}
    base_fresh = {k.split("|")[0]: z[k] for k in z.files if k.endswith("|1")}

    # 2: out of fold in the store
    oof: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    for part in range(a.partitions):
        fold = prompt_folds(g, a.folds, part)
        base = oof_cached(
            cache / f"oof_p{part}_k{a.folds}.npz",
            fold,
            lambda tr, te: fit_scores(
                F, st.labels, g, fams, tr, [(F.subset(te), fams[te])], layers
            ),
        )
        oof.append((fold, base))

    heads = [k for k in variants(base_val, val.prompt_ids) if k.startswith("elhsr")]
    vs = variants(base_val, val.prompt_ids)
    out["val"] = table(val, np.arange(len(val)), add_head_votes(vs, list(vs), val.prompt_ids))

    out["in_store"] = []
    picks_all: list[dict[str, dict[str, str]]] = []
    for part, (fold, base) in enumerate(oof):
        sc = add_head_votes(variants(base, g), list(variants(base, g)), g)
        picks = {}
        for h in heads:
            sc[f"picked[{h}]_vote"], picks[h] = picked_out_of_fold(
                sc, st.labels, g, fams, ex, fold, candidates(h), N
            )
        tab = table(st, every, sc)
        out["in_store"].append({"partition": part, "table": tab, "picks": picks})
        picks_all.append(
            {h: pick_by_family(sc, st.labels, g, fams, candidates(h), ex, N) for h in heads}
        )

    # fresh: the pick chosen on partition 0's out-of-fold scores (as the demo does)
    gf = fresh.prompt_ids
    ff = _fams(fresh, np.arange(len(fresh)))
    fs = add_head_votes(variants(base_fresh, gf), list(variants(base_fresh, gf)), gf)
    for h in heads:
        fs[f"picked[{h}]_vote"] = picked_scores(fs, ff, picks_all[0][h], gf)
    out["fresh_table"] = table(fresh, np.arange(len(fresh)), fs)
    out["fresh_picks"] = picks_all[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{a.tag}.md").write_text(markdown(out, a))
    print((RESULTS / f"{a.tag}.md").read_text())


def _extra(a: argparse.Namespace, st: Store, extra: Store, layers: list[int], cache: Path) -> None:
    """In store, out of fold, with every prompt of ``extra`` added to each split's training set."""
    n = len(st)
    F = concat_features([st, extra])
    y = np.concatenate([st.labels, extra.labels])
    # prompt ids repeat across task seeds: keep the extra store's apart
    g_all = np.concatenate([st.prompt_ids, np.array(["x:" + p for p in extra.prompt_ids])])
    fams_all = np.concatenate([_fams(st, np.arange(n)), _fams(extra, np.arange(len(extra)))])
    g, fams = st.prompt_ids, fams_all[:n]
    ex = [r["extracted"] for r in st.records]
    xi = n + np.arange(len(extra))
    rows = []
    for part in range(a.partitions):
        fold = prompt_folds(g, a.folds, part)
        base = oof_cached(
            cache / f"oof_p{part}_k{a.folds}_extra-{Path(a.extra).name}.npz",
            fold,
            lambda tr, te: fit_scores(
                F,
                y,
                g_all,
                fams_all,
                np.concatenate([tr, xi]),
                [(F.subset(te), fams[te])],
                layers,
                seeds=SEEDS[:3],
                per_family=False,
            ),  # fmt: skip
        )
        v = variants(base, g)
        sc = add_head_votes(v, list(v), g)
        for h in ("elhsr_s0", "elhsr_ens3"):
            sc[f"picked[{h}]_vote"], _ = picked_out_of_fold(
                sc, st.labels, g, fams, ex, fold, candidates(h), N
            )
        rows.append({"partition": part, "table": table(st, np.arange(n), sc)})
    out = {"train": a.train, "extra": a.extra, "folds": a.folds, "in_store": rows,
           "train_prompts_per_split": int(len(set(g)) * (a.folds - 1) / a.folds
                                          + len(set(extra.prompt_ids)))}  # fmt: skip
    L = [
        "# In store with more training prompts (`quality_ensemble.py --extra`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_ensemble.py --train {a.train} --extra "
        f"{a.extra} --folds {a.folds} --partitions {a.partitions}",
        "```",
        "",
        f"Every split's heads train on the other splits' prompts plus all of `{a.extra}` (about "
        f"{out['train_prompts_per_split']} prompts); tested on the split's own prompts, as in "
        "the demo. BoN@16 (gap closed), per partition of the prompts into splits.",
        "",
        "| scorer | " + " | ".join(f"partition {r['partition']}" for r in rows) + " | mean |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    for name in rows[0]["table"]:
        if name.startswith("_"):
            continue
        vals = [r["table"][name]["all"] for r in rows]
        ref = {
            k: float(np.mean([r["table"]["_ref"][k] for r in rows])) for k in ("random", "pass@16")
        }
        m = float(np.mean(vals))
        L.append(
            f"| {name} | "
            + " | ".join(
                f"{x:.3f} ({_gap({'all': x}, r['table']['_ref'])})" for x, r in zip(vals, rows)
            )
            + f" | {m:.3f} ({_gap({'all': m}, ref)}) |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{a.tag}.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def _gap(row: dict[str, float], ref: dict[str, float]) -> str:
    return f"{100 * gap_closed(row['all'], ref['random'], ref['pass@16']):.0f}%"


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    L = [
        "# ELHSR seed ensembles and per-family heads",
        "",
        "```",
        "PYTHONPATH=src python research/quality/quality_ensemble.py --train "
        f"{a.train} --val {a.val} --fresh {a.fresh} --partitions {a.partitions} --folds {a.folds}",
        "```",
        "",
        "ELHSR at the demo's settings and layers (20-30); `s0` is the demo's single fit, `ensK` the "
        "sum of the within-prompt z-scores of seeds 0..K-1, `fam_` one head per family. "
        "`picked[H]_vote` is the demo's per-family pick among H, probe, rank and their votes, chosen "
        "out of fold. BoN@16 (all / arith / compare), within-prompt AUROC.",
        "",
    ]
    names = [k for k in out["val"] if not k.startswith("_")]
    parts = out["in_store"]
    L += [
        "| scorer | val (seed 2) | in store, partition "
        + " | ".join(str(p["partition"]) for p in parts)
        + " | in store, mean | fresh seed |",
        "|---|---|" + "---|" * len(parts) + "---|---|",
    ]
    for n in [*names, *(k for k in parts[0]["table"] if k.startswith("picked"))]:
        cells = []
        v = out["val"].get(n)
        cells.append("" if v is None else f"{v['all']:.3f} / {v['arith']:.3f} / {v['compare']:.3f}")
        alls = []
        for p in parts:
            r = p["table"][n]
            alls.append(r["all"])
            cells.append(f"{r['all']:.3f} ({_gap(r, p['table']['_ref'])})")
        m = float(np.mean(alls))
        ref = {
            k: float(np.mean([p["table"]["_ref"][k] for p in parts])) for k in ("random", "pass@16")
        }
        cells.append(f"{m:.3f} ({_gap({'all': m}, ref)})")
        fr = out["fresh_table"].get(n)
        cells.append(
            ""
            if fr is None
            else f"{fr['all']:.3f} ({_gap(fr, out['fresh_table']['_ref'])}) / "
            f"{fr['arith']:.3f} / {fr['compare']:.3f}"
        )
        L.append(f"| {n} | " + " | ".join(cells) + " |")
    L += [
        "",
        "Random / pass@16: "
        + "; ".join(
            f"partition {p['partition']} {p['table']['_ref']['random']:.3f} / "
            f"{p['table']['_ref']['pass@16']:.3f}"
            for p in parts
        )
        + f"; fresh {out['fresh_table']['_ref']['random']:.3f} / "
        f"{out['fresh_table']['_ref']['pass@16']:.3f}.",
        "",
    ]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
