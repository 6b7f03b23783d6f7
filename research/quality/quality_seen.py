"""Is the demo's in-store edge memorisation? Best-of-16 on test prompts whose question was, or was
never, asked in the heads' training prompts.

    PYTHONPATH=src .venv/bin/python research/quality/quality_seen.py runs/demo runs/demo1024 runs/demo2048

The synthetic task draws its questions from a small space (arith: 20 x 20 operands x 2 operations
= 800 questions; compare: 380 ordered pairs x 2 = 760), so at thousands of prompts most test
prompts ask a question that some training prompt asked too, in another few-shot context. A head
could then learn "this answer to this question is right" instead of reading correctness from the
model's states. For every `hsrm demo` run given, this refits the demo's heads out of fold exactly
as the demo does (3 prompt splits, the demo's seed and settings; `picked` chosen per split on the
other splits) and on the whole store for its fresh seed, then splits each evaluation by whether
the test prompt's question text occurs among the training prompts.

A memorising control sits beside the heads: `qa_lookup`, the training answers' mean correctness
for the same (question, extracted answer), else the answer prior. Correctness is a function of
(question, answer), so on seen questions it is close to an oracle where the training prompts
sampled the same answer; what the heads do on *unseen* questions is the part that generalises.

Scores are cached next to the run (`seen_scores.safetensors`); a rerun only reports. Writes
research/quality/results/quality_seen.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from hsrm.baselines.controls import AnswerPriorScorer
from hsrm.bon.demo import (
    PICKED,
    demo_specs,
    fresh_scores,
    out_of_fold_scores,
    pick_by_family,
)
from hsrm.bon.outputs import store_report
from hsrm.bon.scorers import VOTE_SUFFIX
from hsrm.layer_spec import parse_layers
from hsrm.splits import prompt_folds
from hsrm.store import Store

RESULTS = Path(__file__).parent / "results"
N = 16
SHOW = (
    PICKED,
    "elhsr",
    "elhsr_vote",
    "rank",
    "qa_lookup",
    "answer_prior",
    "mean_logprob",
    "majority",
    "deepconf_vote",
    "random",
)


def qa_lookup(train: Store, tr: np.ndarray, test: Store, te: np.ndarray) -> np.ndarray:
    """Mean training correctness of the same (question, extracted answer); the answer prior
    (question type, answer) where the pair was never sampled in training."""
    rt, rs = train.records, test.records
    seen: dict[tuple[str, str], list[float]] = {}
    for i in tr:
        seen.setdefault((rt[i]["question"], str(rt[i]["extracted"])), []).append(
            float(rt[i]["label"])
        )
    prior = AnswerPriorScorer().fit(
        [(rt[i].get("qtype"), rt[i]["extracted"]) for i in tr], train.labels[tr]
    )
    fallback = prior.score([(rs[i].get("qtype"), rs[i]["extracted"]) for i in te])
    out = np.empty(len(te))
    for j, i in enumerate(te):
        v = seen.get((rs[i]["question"], str(rs[i]["extracted"])))
        # a pair seen right outranks any prior (in [0, 1]), one seen wrong ranks below any
        out[j] = 3.0 * np.mean(v) - 1.0 if v else fallback[j]
    return out


def in_store(store: Store, layers: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The demo's out-of-fold scores (heads, votes, baselines, `picked`) and `qa_lookup`."""
    scores, _, _ = out_of_fold_scores(store, 3, 0, demo_specs(layers), N)
    fold = prompt_folds(store.prompt_ids, 3, 0)
    scores["qa_lookup"] = np.zeros(len(store))
    for f in range(3):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        scores["qa_lookup"][te] = qa_lookup(store, tr, store, te)
    return scores


def fresh_seed(store: Store, fresh: Store, layers: tuple[int, ...], oof: dict) -> dict:
    """The demo's fresh-seed scores (heads fitted on all of ``store``, `picked` chosen on its
    out-of-fold scores ``oof``) and `qa_lookup`."""
    y, pids = store.labels, store.prompt_ids
    fams = np.array([r["family"] for r in store.records])
    ex = [r["extracted"] for r in store.records]
    specs = demo_specs(layers)
    cands = [*specs, *(h + VOTE_SUFFIX for h in specs)]
    scores = fresh_scores(store, fresh, specs, pick_by_family(oof, y, pids, fams, cands, ex, N))
    scores["qa_lookup"] = qa_lookup(store, np.arange(len(store)), fresh, np.arange(len(fresh)))
    return scores


def cached(path: Path, make: Any) -> dict[str, np.ndarray]:
    if path.exists():
        return dict(load_file(str(path)))
    scores = {k: np.asarray(v, np.float64) for k, v in make().items()}
    save_file(scores, str(path))
    return scores


def summary(store: Store, idx: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    if len(idx) == 0:
        return {"prompts": 0}
    rep = store_report(store, idx, {k: v[idx] for k, v in scores.items()}, 1000, votes=(PICKED,))
    K = str(N)
    out = {
        "prompts": rep["n_prompts"],
        "mean_accuracy": rep["mean_accuracy"],
        "pass@16": rep["pass_at_k"][K],
        "bon16": {s: rep["bon"][s][K] for s in SHOW if s in rep["bon"]},
        "bon16_ci": {s: rep["bon_ci"][s][K] for s in SHOW if s in rep["bon"]},
        "gap": {s: rep["gap_closed"][s][K] for s in SHOW if s in rep["bon"]},
        "per_family": {
            f: {s: v["bon"][s][K] for s in (PICKED, "majority", "qa_lookup")}
            for f, v in rep.get("per_family", {}).items()
        },
    }
    return out


def run(path: Path) -> dict[str, Any]:
    store = Store(path / "samples")
    layers = parse_layers("top:11", store.fingerprint.n_layers)
    scores = cached(path / "seen_scores.safetensors", lambda: in_store(store, layers))
    fold = prompt_folds(store.prompt_ids, 3, 0)  # the split in_store used
    q = np.array([r["question"] for r in store.records])
    seen = np.zeros(len(store), bool)
    for f in range(3):
        te = fold == f
        seen[te] = np.isin(q[te], np.unique(q[~te]))
    row: dict[str, Any] = {
        "run": str(path),
        "prompts": int(len(set(store.prompt_ids))),
        "in_store": {
            "all": summary(store, np.arange(len(store)), scores),
            "seen": summary(store, np.flatnonzero(seen), scores),
            "unseen": summary(store, np.flatnonzero(~seen), scores),
        },
    }
    if (path / "fresh_samples").exists():
        fresh = Store(path / "fresh_samples")
        fs = cached(
            path / "seen_fresh_scores.safetensors",
            lambda: fresh_seed(store, fresh, layers, scores),
        )
        fq = np.array([r["question"] for r in fresh.records])
        fseen = np.isin(fq, np.unique(q))
        row["fresh"] = {
            "all": summary(fresh, np.arange(len(fresh)), fs),
            "seen": summary(fresh, np.flatnonzero(fseen), fs),
            "unseen": summary(fresh, np.flatnonzero(~fseen), fs),
        }
    return row


def markdown(rows: list[dict[str, Any]], runs: list[str]) -> str:
    L = [
        "# Seen and unseen questions (`quality_seen.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_seen.py {' '.join(runs)}",
        "```",
        "",
        "BoN@16 (gap closed between random and pass@16). *seen*: test prompts whose question text "
        "occurs among the training prompts (in another few-shot context); *unseen*: the rest. "
        "`qa_lookup` is a memorising control (mean training correctness of the same question and "
        "answer, else the answer prior).",
        "",
    ]
    for where in ("in_store", "fresh"):
        L += [
            f"## {'In store, out of fold (3 splits)' if where == 'in_store' else 'Fresh seed'}",
            "",
            "| store prompts | questions | prompts | pass@16 | picked [95% CI] | "
            + " | ".join(SHOW[1:])
            + " | arith: picked / majority / qa_lookup | compare: the same |",
            "|---|---|---|---|---|" + "---|" * (len(SHOW) + 1),
        ]
        for r in rows:
            for part in ("all", "seen", "unseen"):
                s = r.get(where, {}).get(part)
                if not s or not s["prompts"]:
                    continue
                cells = [
                    f"{s['bon16'][n]:.3f} ({100 * s['gap'][n]:.0f}%)" if n in s["bon16"] else ""
                    for n in SHOW
                ]
                lo, hi = s["bon16_ci"][PICKED]
                cells[0] += f" [{lo:.3f}, {hi:.3f}]"
                cells += [
                    " / ".join(f"{v:.3f}" for v in s["per_family"][f].values())
                    if f in s["per_family"]
                    else ""
                    for f in ("arith", "compare")
                ]
                L.append(
                    f"| {r['prompts']} | {part} | {s['prompts']} | {s['pass@16']:.3f} | "
                    + " | ".join(cells)
                    + " |"
                )
        L.append("")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="hsrm demo output folders")
    ap.add_argument("--tag", default="quality_seen")
    a = ap.parse_args()
    rows = [run(Path(p)) for p in a.runs]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(rows, indent=1))
    md = markdown(rows, a.runs)
    (RESULTS / f"{a.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
