"""How good must a prefix head be for early pruning to keep best-of-N? (issue 12, goal 4)

    PYTHONPATH=src .venv/bin/python research/quality/quality_prune_needed.py \\
        --train runs/cot2_train --test runs/cache_cot2/cot2_online_none

Goal 4 asks for >= 40% fewer generated tokens with BoN@16 within 0.01 of full sampling. The real
prefix heads fall short (`quality_pruning_cot2_seed12.md`, `quality_prune_threshold.md`). This
benchmark asks by how much, in the one unit that carries over to other models: the within-prompt
AUROC a prefix score needs at the checkpoint.

1. **What a prefix can tell.** Two samples of a prompt with the same first t answer tokens have the
   same hidden states there, so no prefix reader can rank them (``hsrm.bon.prune.prefix_ties``:
   the share of within-prompt (right, wrong) pairs still identical at t, and the AUROC ceiling
   that leaves). Beside it, the real prefix head's within-prompt AUROC at 4-16 tokens
   (``fit_prefix_head``, every captured layer): out of fold (3 prompt splits) on the training
   store, and on the test store with the head fitted on all of the training store; and other
   poolings of the prefix states (``variant_aurocs``).
2. **Synthetic prefix scores of a set quality.** For a level a, every sample gets
   ``d * y + N(0, 1)`` with ``d = sqrt(2) * Phi^-1(a)`` (binormal: a right and a wrong sample are
   ordered correctly with probability a), averaged over each group of samples with identical
   first t tokens (which a prefix reader cannot score apart), so the AUROC it has at t is
   measured, not set. Each draw is replayed exactly over the fully sampled stores with the share
   policy at settings that save 43-62% of the tokens. The BoN@16 change against no pruning is
   averaged over ``--draws`` draws per prompt, then a paired bootstrap CI is taken over prompts.
   Both stores are pooled (their prompts are disjoint), with the final head's scores out of fold
   on the training store.
3. **A text oracle for the first step**: 1 when the answer's first written step ("a + b = c") is
   arithmetically right, what a perfect step checker would know at about token 8. Its AUROC, and
   its replay with half stopped at token 8.

Writes research/quality/results/quality_prune_needed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).parent))
import quality_pruning_online as QP  # type: ignore[import-not-found]  # noqa: E402

from hsrm import metrics as M  # noqa: E402
from hsrm.bon.prefix_head import fit_prefix_head  # noqa: E402
from hsrm.bon.prune import prefix_ties, pruning_curve  # noqa: E402
from hsrm.bon.quality import pooled_states  # noqa: E402
from hsrm.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CPS = (4, 6, 8, 10, 12, 16)
# (checkpoints, share stopped at each): 43%, 62%, 55%, 51% and 44% fewer tokens on these stores
SETTINGS = (((4,), 0.5), ((4, 8), 0.5), ((8,), 0.75), ((8, 12), 0.5), ((12,), 0.75))
LEVELS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
SELECTORS = ("majority", "deepconf_vote", "mean_logprob", "head", "head_pvote")
_STEP = re.compile(r"\s*(-?\d+)\s*([-+*x×])\s*(-?\d+)\s*=\s*(-?\d+)")


def first_step_right(text: str) -> int:
    """1 when the answer opens with an arithmetically right step ``a op b = c``, else 0."""
    m = _STEP.match(text)
    if not m:
        return 0
    a, op, b, c = m.groups()
    x, z = int(a), int(b)
    return int({"+": x + z, "-": x - z}.get(op, x * z) == int(c))


def pname(cps: tuple[int, ...], frac: float) -> str:
    return f"head frac={frac} at {','.join(map(str, cps))}"


def replay(
    st: Store,
    pref: dict[int, np.ndarray],
    head: np.ndarray,
    settings,
    controls: bool = False,
) -> dict[str, Any]:
    """The share policy at ``settings`` replayed over ``st``; per-prompt BoN per selector. With
    ``controls``: also random pruning at each setting's budget (20 draws) and DeepConf's online
    stop (``QP.DEEPCONF_GRID``)."""
    c = pruning_curve(
        st,
        np.arange(len(st)),
        pref,
        selectors=SELECTORS,
        head_settings=settings,
        deepconf_settings=QP.DEEPCONF_GRID if controls else (),
        random_repeats=20 if controls else 1,
        extra_scores={"head": head},
    )
    pts = [p for p in c["points"] if controls or p["family"] != "random"]
    return {p["policy"]: p for p in pts}


def pooled(parts: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """Concatenate the stores' per-prompt BoN (prompts are disjoint) and their tokens."""
    return {
        "tokens": sum(p[policy]["tokens"] for p in parts),
        "per_prompt": {s: sum((p[policy]["per_prompt"][s] for p in parts), []) for s in SELECTORS},
    }


def prefix_groups(st: Store, t: int) -> np.ndarray:
    """(records,) code of (prompt, first t answer tokens): samples a prefix reader cannot tell
    apart at token t share a code."""
    codes: dict[tuple[str, tuple[int, ...]], int] = {}
    g = st.prompt_ids
    return np.array(
        [codes.setdefault((g[i], tuple(st.token_ids(i)[:t])), len(codes)) for i in range(len(st))]
    )


def real_prefix_scores(
    train: Store, test: Store, folds: int = 3, cps: tuple[int, ...] = CPS
) -> dict[str, dict[int, np.ndarray]]:
    """The prefix head (``fit_prefix_head``, every captured layer) at checkpoints ``cps``: out of
    fold on the training store, and fitted on all of it for the test store."""
    from hsrm.splits import prompt_folds

    def score(h, st: Store, idx: np.ndarray) -> dict[int, np.ndarray]:
        return {
            t: h.score(t, torch.as_tensor(pooled_states(st, idx, prefix=t))).numpy() for t in cps
        }

    oof = {t: np.zeros(len(train)) for t in cps}
    fold = prompt_folds(train.prompt_ids, folds, 0)
    for f in range(folds):
        h = fit_prefix_head(train, np.flatnonzero(fold != f), cps)
        for t, v in score(h, train, np.flatnonzero(fold == f)).items():
            oof[t][fold == f] = v
    return {
        "train (out of fold)": oof,
        "test": score(fit_prefix_head(train, None, cps), test, np.arange(len(test))),
    }


def survivors(st: Store, pref: dict[int, np.ndarray], draws: int = 20) -> dict[str, Any]:
    """What each real setting leaves per prompt, head against random at the same budget (mean of
    ``draws``): the share of prompts with a right survivor, the share of survivors that are right,
    and the distinct extracted answers among them; ``none``: the unpruned store."""
    from hsrm.bon.prune import head_stops, random_stops

    y, groups = st.labels, M.by_group(st.prompt_ids)
    ext = [r["extracted"] for r in st.records]
    lens = np.array([r["n_tokens"] for r in st.records])
    rng = np.random.default_rng(0)

    def stats(rows: np.ndarray, stop: np.ndarray) -> tuple[float, float, float]:
        done = rows[stop >= lens[rows]]
        return float(y[done].any()), float(y[done].mean()), float(len({ext[i] for i in done}))

    out: dict[str, Any] = {
        "none": np.mean([stats(r, lens[r]) for r in groups.values()], 0).tolist()
    }
    for cps, frac in SETTINGS:
        head, rand = [], []
        for rows in groups.values():
            stop, counts = head_stops(lens[rows], {t: pref[t][rows] for t in cps}, cps, frac)
            head.append(stats(rows, stop))
            rand.append(
                np.mean(
                    [stats(rows, random_stops(lens[rows], counts, cps, rng)) for _ in range(draws)],
                    0,
                )
            )
        out[pname(cps, frac)] = {
            "head": np.mean(head, 0).tolist(),
            "random": np.mean(rand, 0).tolist(),
        }
    return out


POOLINGS = ("mean", "last4", "last", "mean+last4")


def variant_aurocs(train: Store, test: Store, cps=(8, 12, 16), folds: int = 3) -> list[dict]:
    """Other prefix heads, for the record: the states pooled over the whole prefix (the library's
    head), over its last 4 tokens, its last token, or both the mean and the last 4; with or
    without centering each feature on its prompt's mean; C 0.001 or 0.01. Within-prompt AUROC
    out of fold on the training store and fitted on it for the test store."""
    from hsrm.bon.prefix_head import _fit_checkpoint
    from hsrm.bon.quality import center_by_prompt
    from hsrm.splits import prompt_folds

    H = {
        k: [st.hidden(i).numpy() for i in range(len(st))] for k, st in (("tr", train), ("te", test))
    }

    def pool(p: np.ndarray, kind: str) -> np.ndarray:  # (tokens, L, d) -> (L, d) or (L, 2d)
        if kind == "mean":
            return p.mean(0)
        if kind == "last4":
            return p[-4:].mean(0)
        if kind == "last":
            return p[-1]
        return np.concatenate([p.mean(0), p[-4:].mean(0)], -1)

    def feats(k: str, t: int, kind: str) -> np.ndarray:  # (n, L*d) or (n, 2*L*d)
        return np.array([pool(h[:t], kind).reshape(-1) for h in H[k]], np.float32)

    def fit_score(Xa, ya, Xb, C) -> np.ndarray:
        mu, sd, w, b = _fit_checkpoint(Xa, ya, C)
        return (Xb - mu) / sd @ w + b

    y, g, yt, gt = train.labels, train.prompt_ids, test.labels, test.prompt_ids
    fold = prompt_folds(g, folds, 0)
    out = []
    for t in cps:
        for kind in POOLINGS:
            Xa, Xb = feats("tr", t, kind), feats("te", t, kind)
            for center in (False, True):
                A, B = (center_by_prompt(Xa, g), center_by_prompt(Xb, gt)) if center else (Xa, Xb)
                for C in (0.001, 0.01):
                    s = np.zeros(len(y))
                    for f in range(folds):
                        s[fold == f] = fit_score(A[fold != f], y[fold != f], A[fold == f], C)
                    out.append({
                        "checkpoint": t, "pooling": kind, "center": center, "C": C,
                        "oof": M.within_prompt_auroc(s, y, g),
                        "test": M.within_prompt_auroc(fit_score(A, y, B, C), yt, gt),
                    })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="runs/cot2_train")
    ap.add_argument("--test", default="runs/cache_cot2/cot2_online_none")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tag", default="quality_prune_needed")
    ap.add_argument(
        "--no-variants", action="store_true", help="skip the other poolings of the prefix states"
    )
    a = ap.parse_args()
    t0 = time.perf_counter()
    train, test = Store(a.train), Store(a.test)
    stores = {"train (out of fold)": train, "test": test}
    out: dict[str, Any] = {"train": a.train, "test": a.test, "draws": a.draws}

    # 1. what a prefix reader could know, and what the real prefix heads know
    real = real_prefix_scores(train, test)
    groups = {k: {t: prefix_groups(st, t) for t in CPS} for k, st in stores.items()}
    out["checkpoints"] = {
        k: {
            str(t): {
                **prefix_ties(
                    [st.token_ids(i) for i in range(len(st))], st.labels, st.prompt_ids, t
                ),
                "auroc": M.within_prompt_auroc(real[k][t], st.labels, st.prompt_ids),
            }
            for t in CPS
        }
        for k, st in stores.items()
    }
    print(f"real prefix heads {time.perf_counter() - t0:.0f} s", flush=True)
    heads = {
        "train (out of fold)": QP.final_head_scores(train),
        "test": QP.final_head_scores(train, test),
    }

    # 3. the first-step oracle
    step = {
        k: np.array([first_step_right(r["text"]) for r in st.records]) for k, st in stores.items()
    }
    out["first_step"] = {
        k: {
            "share_right": float(step[k].mean()),
            "p_right_given_step_right": float(st.labels[step[k] == 1].mean()),
            "p_right_given_step_wrong": float(st.labels[step[k] == 0].mean()),
            "auroc": M.within_prompt_auroc(step[k].astype(float), st.labels, st.prompt_ids),
        }
        for k, st in stores.items()
    }

    # none, the real heads, the oracle: one replay each
    rows: dict[str, dict[str, Any]] = {}
    parts_real, parts_step = [], []
    for k, st in stores.items():
        parts_real.append(replay(st, real[k], heads[k], SETTINGS, controls=True))
        rng = np.random.default_rng(0)  # ties among the oracle's 0/1 broken at random
        o = step[k] + 1e-3 * rng.standard_normal(len(st))
        parts_step.append(replay(st, {8: o}, heads[k], (((8,), 0.5),)))
    none = pooled(parts_real, "none")
    out["none"] = {
        "tokens": none["tokens"],
        "bon": {s: float(np.mean(v)) for s, v in none["per_prompt"].items()},
    }

    def row(name: str, tokens: float, pp: dict[str, list[float]], extra: dict) -> None:
        rows[name] = {
            "tokens": tokens,
            "saved": 1 - tokens / none["tokens"],
            "bon": {s: float(np.mean(v)) for s, v in pp.items()},
            "delta": {
                s: QP.paired_delta(none["per_prompt"][s], pp[s], a.n_boot) for s in SELECTORS
            },
            **extra,
        }

    # the real heads and their controls, pooled and per store
    real_pols = [pname(c, f) for c, f in SETTINGS]
    real_pols = [x for p in real_pols for x in (p, f"random, same budget as {p}")]
    real_pols += [p for p in parts_real[0] if p.startswith("deepconf")]
    per_store: dict[str, dict[str, Any]] = {}
    for pol in real_pols:
        p = pooled(parts_real, pol)
        kind = "real" if pol.startswith("head") else pol.split(",")[0].split(" ")[0]
        name = f"real prefix head, {pol}" if kind == "real" else pol
        row(name, p["tokens"], p["per_prompt"], {"kind": kind, "policy": pol})
        per_store[name] = {
            k: {
                "saved": 1 - part[pol]["tokens"] / part["none"]["tokens"],
                "tokens": [part[pol]["tokens"], part["none"]["tokens"]],
                # per prompt, pruned minus unpruned: quality_prune_fresh.py pools stores with it
                "diff": {
                    s: (np.subtract(part[pol]["per_prompt"][s], part["none"]["per_prompt"][s]))
                    .round(6).tolist()
                    for s in SELECTORS
                },
                "delta": {
                    s: QP.paired_delta(part["none"]["per_prompt"][s], part[pol]["per_prompt"][s],
                                       a.n_boot)
                    for s in SELECTORS
                },
            }
            for k, part in zip(stores, parts_real, strict=True)
        }  # fmt: skip
    out["per_store"] = per_store
    out["survivors"] = {k: survivors(st, real[k]) for k, st in stores.items()}
    out["per_store_none"] = {
        k: {s: float(np.mean(part["none"]["per_prompt"][s])) for s in SELECTORS}
        for k, part in zip(stores, parts_real, strict=True)
    }
    p = pooled(parts_step, pname((8,), 0.5))
    row(f"first-step oracle, {pname((8,), 0.5)}", p["tokens"], p["per_prompt"], {"kind": "oracle"})

    # 2. synthetic prefix scores of a set AUROC, constant over samples a prefix cannot tell apart
    rng = np.random.default_rng(1)
    for lvl in LEVELS:
        d = float(np.sqrt(2) * norm.ppf(lvl))
        acc: dict[str, list[Any]] = {}
        auc: dict[int, list[float]] = {t: [] for t in CPS}
        for _ in range(a.draws):
            parts = []
            for k, st in stores.items():
                s = d * st.labels + rng.standard_normal(len(st))
                pref = {}
                for t in CPS:
                    gt = groups[k][t]  # the mean over each prefix group
                    pref[t] = (np.bincount(gt, s) / np.bincount(gt))[gt]
                    auc[t].append(M.within_prompt_auroc(pref[t], st.labels, st.prompt_ids))
                parts.append(replay(st, pref, heads[k], SETTINGS))
            for cps, frac in SETTINGS:
                acc.setdefault(pname(cps, frac), []).append(pooled(parts, pname(cps, frac)))
        for pol, draws in acc.items():
            pp = {s: np.mean([dr["per_prompt"][s] for dr in draws], 0).tolist() for s in SELECTORS}
            tok = float(np.mean([dr["tokens"] for dr in draws]))
            row(f"synthetic AUROC {lvl}, {pol}", tok, pp,
                {"kind": "synthetic", "auroc": lvl, "policy": pol,
                 "measured_auroc": {str(t): float(np.mean(v)) for t, v in auc.items()}})  # fmt: skip
        print(f"AUROC {lvl}: {time.perf_counter() - t0:.0f} s", flush=True)
    out["variants"] = [] if a.no_variants else variant_aurocs(train, test)
    print(f"pooling variants: {time.perf_counter() - t0:.0f} s", flush=True)
    out["rows"] = rows
    out["n_prompts"] = len(none["per_prompt"]["majority"])
    out["needed"] = needed(rows)
    out["seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(
        json.dumps(QP.compact(out), separators=(",", ":"))
    )  # per-prompt lists: compact
    md = markdown(out, a)
    (RESULTS / f"{a.tag}.md").write_text(md)
    print(md)


def needed(rows: dict[str, dict[str, Any]], tol: float = 0.01) -> dict[str, dict[str, Any]]:
    """Per setting and selector: the lowest synthetic level whose mean change is >= -tol, with
    every higher level also within it, and the AUROC it measured at the setting's first
    checkpoint (None: no level tried is enough)."""
    out: dict[str, dict[str, Any]] = {}
    for pol in [pname(c, f) for c, f in SETTINGS]:
        syn = sorted(
            (r for r in rows.values() if r["kind"] == "synthetic" and r["policy"] == pol),
            key=lambda r: r["auroc"],
        )
        first = pol.split(" at ")[1].split(",")[0]
        out[pol] = {}
        for s in SELECTORS:
            ok = None
            for r in reversed(syn):
                if r["delta"][s]["delta"] < -tol:
                    break
                ok = {"level": r["auroc"], "measured": r["measured_auroc"][first]}
            out[pol][s] = ok
    return out


def _head(cols: list[str]) -> list[str]:
    """A markdown table's header and rule."""
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _section(title: str, text: str, cols: list[str]) -> list[str]:
    """A blank line, a heading (or none), a paragraph, and a table header."""
    return ["", *([title, ""] if title else []), text, "", *_head(cols)]


def _ci(d: dict[str, Any]) -> str:
    """A paired change with its CI: ``+0.012 [-0.020, +0.045]``."""
    return f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    sel = SELECTORS
    L = [
        "# How good must a prefix head be? (`quality_prune_needed.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_prune_needed.py --train {a.train} --test {a.test} "
        f"--draws {a.draws}"
        + (" --no-variants" if a.no_variants else "")
        + (f" --tag {a.tag}" if a.tag != "quality_prune_needed" else ""),
        "```",
        "",
        f"CoT family (operands 1-5, 6 worked examples per prompt), both fully sampled stores pooled: "
        f"{out['n_prompts']} prompts x 16, {out['none']['tokens']} answer tokens. The final head "
        "(`head`: top sample; `head_pvote`: sigmoid-weighted vote) is out of fold on the training "
        "store and fitted on it for the test store. Each cell: BoN@16, then the paired change "
        "against no pruning [95% CI over prompts]. Synthetic rows: the mean over "
        f"{out['draws']} noise draws per prompt. {out['seconds']:.0f} s.",
        "",
        "## What a prefix can tell at each checkpoint",
        "",
        "Per store and answer token t: the share of within-prompt (right, wrong) pairs whose first "
        "t tokens are identical, the within-prompt AUROC ceiling that leaves any prefix reader "
        "(`hsrm.bon.prune.prefix_ties`), and the real prefix head's within-prompt AUROC "
        "(`fit_prefix_head`, every captured layer; out of fold on the training store, fitted on "
        "it for the test store).",
        "",
        *_head(["store", *(f"token {t}" for t in CPS)]),
    ]
    for k, v in out["checkpoints"].items():
        for key, name in (
            ("tied", "identical pairs"),
            ("auroc_ceiling", "ceiling"),
            ("auroc", "head"),
        ):
            L.append(f"| {k}: {name} | " + " | ".join(f"{v[str(t)][key]:.3f}" for t in CPS) + " |")
    if out["variants"]:
        L += _section(
            "",
            "Other prefix heads (`variant_aurocs`): the states pooled over the whole prefix (as "
            "above), its last 4 tokens, its last token, or the mean and the last 4 together; centered "
            "on the prompt's mean or not; C 0.001 or 0.01. Within-prompt AUROC, out of fold on the "
            "training store / on the test store:",
            ["token", "pooling"]
            + [
                f"{'centered' if c else 'raw'}, C={C}" for c in (False, True) for C in (0.001, 0.01)
            ],
        )
        var = out["variants"]
        for t in sorted({v["checkpoint"] for v in var}):
            for kind in POOLINGS:
                cells = [
                    f"{v['oof']:.3f} / {v['test']:.3f}"
                    for v in var
                    if v["checkpoint"] == t and v["pooling"] == kind
                ]
                L.append(f"| {t} | {kind} | " + " | ".join(cells) + " |")
        best = max(var, key=lambda v: v["oof"])
        L.append(
            f"\nThe best out of fold: token {best['checkpoint']}, {best['pooling']}, "
            f"{'centered' if best['center'] else 'raw'}, C={best['C']}: {best['oof']:.3f} out of fold, "
            f"{best['test']:.3f} on the test store. Highest on the test store: "
            f"{max(v['test'] for v in var):.3f}."
        )
    L += _section(
        "",
        "First written step arithmetically right (what a perfect step checker knows at about "
        "token 8):",
        ["store", "share right", "P(answer right \\| step right)",
         "P(answer right \\| step wrong)", "within-prompt AUROC"],
    )  # fmt: skip
    for k, v in out["first_step"].items():
        L.append(
            f"| {k} | {v['share_right']:.3f} | {v['p_right_given_step_right']:.3f} | "
            f"{v['p_right_given_step_wrong']:.3f} | {v['auroc']:.3f} |"
        )
    L += _section(
        "## BoN@16 after pruning",
        "Synthetic rows: `s = d * y + N(0, 1)` with `d = sqrt(2) * Phi^-1(level)`, then averaged "
        "over each group of a prompt's samples with identical first t tokens (a prefix reader "
        "cannot score them apart); `measured` is the within-prompt AUROC this leaves at the "
        "setting's checkpoints.",
        ["policy", "measured AUROC", "tokens", "saved", *sel],
    )
    L.append(
        f"| none | | {out['none']['tokens']} | 0% | "
        + " | ".join(f"{out['none']['bon'][s]:.3f}" for s in sel)
        + " |"
    )
    for name, r in out["rows"].items():
        cells = [f"{r['bon'][s]:.3f} ({_ci(r['delta'][s])})" for s in sel]
        m = ""
        if r["kind"] == "synthetic":
            cps = r["policy"].split(" at ")[1].split(",")
            m = " / ".join(f"{r['measured_auroc'][t]:.3f}" for t in cps)
        L.append(
            f"| {name} | {m} | {r['tokens']:.0f} | {r['saved']:.0%} | " + " | ".join(cells) + " |"
        )
    L += _section(
        "### Per store: the real heads and their controls",
        "Paired change against the same store's unpruned BoN@16 [95% CI over its prompts]; "
        "random = the mean of 20 draws that stop as many samples per prompt and checkpoint as the "
        "head above it.",
        ["policy", "store", "saved", *sel],
    )
    for k, b in out["per_store_none"].items():
        L.append(f"| none | {k} | 0% | " + " | ".join(f"{b[s]:.3f}" for s in sel) + " |")
    for name, by in out["per_store"].items():
        for k, r in by.items():
            cells = [_ci(r["delta"][s]) for s in sel]
            L.append(f"| {name} | {k} | {r['saved']:.0%} | " + " | ".join(cells) + " |")
    L += _section(
        "### What the survivors hold (per store)",
        "Per prompt, averaged: a right answer among the samples that finish / the share of them "
        "that are right / distinct extracted answers among them; head against random at the same "
        "budget (mean of 20 draws).",
        ["setting", "store", "head", "random"],
    )
    for k, sv in out["survivors"].items():
        L.append(f"| none | {k} | " + " / ".join(f"{x:.3f}" for x in sv["none"]) + " | |")
        for pol, v in sv.items():
            if pol != "none":
                L.append(
                    f"| {pol} | {k} | "
                    + " / ".join(f"{x:.3f}" for x in v["head"])
                    + " | "
                    + " / ".join(f"{x:.3f}" for x in v["random"])
                    + " |"
                )
    if not out["needed"] or all(v is None for x in out["needed"].values() for v in x.values()):
        return "\n".join(L) + "\n"
    L += _section(
        "## The AUROC needed",
        "Per setting: the lowest synthetic level whose mean change is >= -0.01 with every level "
        "above it too, and (after the slash) the within-prompt AUROC that level measured at the "
        "setting's first checkpoint; `-`: none of the levels tried.",
        ["setting", *sel],
    )
    for pol, v in out["needed"].items():
        L.append(
            f"| {pol} | "
            + " | ".join(
                "-" if v[s] is None else f"{v[s]['level']} / {v[s]['measured']:.3f}" for s in sel
            )
            + " |"
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
