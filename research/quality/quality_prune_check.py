"""An online pruned run against its unpruned twin (issue 12, goal 4).

    PYTHONPATH=src .venv/bin/python research/quality/quality_prune_check.py \\
        --unpruned runs/cot2_test15 --pruned runs/cot2_test15_pruned --train runs/cot2_train384

The pruned run is `hsrm sample ... --prune head --prune-head DIR` with the unpruned run's task and
sampling flags. The sampler draws each sample's uniforms up front, so every finished sample
should be its unpruned twin and every pruned one a prefix of it; the replays in
``quality_prune_needed.py`` rest on that. Reported: answer tokens generated, wall time, the
two checks, and BoN@16 over the finished samples per selector against the unpruned run (paired
change, bootstrap CI over prompts). ``head``/``head_pvote``: the final head (pooled probe)
fitted on ``--train``. Writes research/quality/results/<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import quality_pruning_online as QP  # type: ignore[import-not-found]  # noqa: E402

from hsrm.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SELECTORS = ("majority", "deepconf_vote", "mean_logprob", "head", "head_pvote")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unpruned", default="runs/cot2_test15")
    ap.add_argument("--pruned", default="runs/cot2_test15_pruned")
    ap.add_argument("--train", default="runs/cot2_train384")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--tag", default="quality_prune_check")
    a = ap.parse_args()
    none, pr, train = Store(a.unpruned), Store(a.pruned), Store(a.train)
    ref = QP._samples(none)
    kept = [r for r in pr.records if r.get("stop") != "pruned"]
    cut = [r for r in pr.records if r.get("stop") == "pruned"]
    key = lambda r: (r["prompt_id"], r["sample"])  # noqa: E731
    out: dict[str, Any] = {
        "unpruned": a.unpruned,
        "pruned": a.pruned,
        "prune": pr.meta["sampling"].get("prune"),
        "tokens": [int(pr.column("n_tokens").sum()), int(none.column("n_tokens").sum())],
        "seconds": [pr.meta["last_run"]["seconds"], none.meta["last_run"]["seconds"]],
        "finished": len(kept),
        "finished_identical": sum(r["text"] == ref[key(r)]["text"] for r in kept),
        "pruned_samples": len(cut),
        "pruned_prefix_of_full": sum(ref[key(r)]["text"].startswith(r["text"]) for r in cut),
    }
    bon = {}
    for name, st in (("pruned", pr), ("unpruned", none)):
        head = QP.final_head_scores(train, st)
        bon[name] = QP.bon_finished(st, a.n_boot, selectors=SELECTORS, extra={"head": head})
    out["bon"] = {
        s: {
            "unpruned": bon["unpruned"][s]["bon"],
            "pruned": bon["pruned"][s]["bon"],
            **QP.paired_delta(bon["unpruned"][s]["per_prompt"], bon["pruned"][s]["per_prompt"],
                              a.n_boot),
        }
        for s in SELECTORS
    }  # fmt: skip
    (RESULTS / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    t, s = out["tokens"], out["seconds"]
    L = [
        "# An online pruned run against its unpruned twin (`quality_prune_check.py`)",
        "",
        "```",
        f"PYTHONPATH=src python research/quality/quality_prune_check.py --unpruned {a.unpruned} "
        f"--pruned {a.pruned} --train {a.train}"
        + ("" if a.tag == "quality_prune_check" else f" --tag {a.tag}"),
        "```",
        "",
        f"Pruning: `{json.dumps(out['prune'])}`. Answer tokens {t[0]} against {t[1]} "
        f"({1 - t[0] / t[1]:.0%} fewer); sampling {s[0]:.0f} s against {s[1]:.0f} s (a 2-core box "
        "shared with other jobs; each run's `command` in its meta.json gives its threads). "
        "Finished samples identical to the unpruned run: "
        f"{out['finished_identical']} of {out['finished']}; pruned samples that are a prefix of "
        f"their unpruned twin: {out['pruned_prefix_of_full']} of {out['pruned_samples']}.",
        "",
        "| selector | BoN@16 unpruned | BoN@16 over the finished samples | change [95% CI over prompts] |",
        "|---|---|---|---|",
    ]
    for sel, v in out["bon"].items():
        L.append(
            f"| {sel} | {v['unpruned']:.3f} | {v['pruned']:.3f} | {v['delta']:+.3f} "
            f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] |"
        )
    md = "\n".join(L) + "\n"
    (RESULTS / f"{a.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
