"""The development tasks (reasoning-gym generators) on the embedded model: which have headroom,
which head recipe is the default, and whether heads carry to tasks they never saw (issue 31).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_tasks.py table [--tasks lcm,count_bits]
        [--n-prompts 24] [--n 8] [--threads 1] [--resume]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_tasks.py choose --train TRAIN --val VAL
    PYTHONPATH=src .venv/bin/python benchmarks/bench_tasks.py report --train TRAIN --test TEST

``table`` (the first stage): every development generator (``DEV`` below; no other generator is
used here) is sampled with ``hsrm sample``'s own code (``--task rg:NAME``, 3 exemplars drawn per
prompt from the same generator with another seed, the answer turn prefilled "The answer is",
temperature 0.8) on ``--n-prompts`` prompts x ``--n`` samples. Each generator runs with its default
settings; ``--tasks`` also takes settings, ``'lcm(max_value=20)'``, reported as their own row.

Answer tokens per task: the longest of 64 reference answers (" ANSWER.", tokenised) drawn with
another task seed, + 2, within [4, 48] -- long enough to finish a right answer, short enough that
the 2-core box samples all tasks in about an hour.

Reported per task: mean accuracy (share of samples the generator's verifier scores 1.0), pass@n
(share of prompts with a right sample), headroom (pass@n - mean accuracy), majority@n (the most
common extracted answer is right), and whether the task is *usable*: right 5-60% of the time.
Results are written after every task (``--resume`` skips tasks already measured with the same
settings) to benchmarks/results/tasks_dev.json and .md.

``choose`` and ``report`` follow research/rg/PROTOCOL.md on stores ``hsrm sample`` wrote (the
commands are there): ``choose`` fits the protocol's candidate heads on the train store and picks
the recipe by mean BoN@16 over the tasks of the val store (tasks_recipe.json/.md); ``report``
scores that recipe on the test store against the free selectors and the answer prior, per task,
on unseen questions only, left one task out, and along a learning curve of labelled prompts of
the new task (tasks_heads.json/.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.baselines.controls import AnswerPriorScorer
from hsrm.baselines.fusion import minmax_fusion
from hsrm.bon.baselines import baseline_scores, control_scores, prompt_question
from hsrm.bon.demo import DEMO_ELHSR
from hsrm.bon.report import bon_per_prompt
from hsrm.bon.scorers import SCORERS, VOTES, add_head_votes, vote_keep
from hsrm.engines import sample
from hsrm.heads import get_head_class, make_head
from hsrm.layer_spec import parse_layers
from hsrm.metrics import bootstrap_ci, by_group, gap_closed, majority_prompt
from hsrm.models import load_model
from hsrm.sampling import SampleRunConfig
from hsrm.store import RecordsView, Store, StoreUnion
from hsrm.tasks import get_task

log = logging.getLogger("bench_tasks")

RESULTS = Path(__file__).parent / "results"
#: the development generators of issue 31 (the only ones tests, benchmarks and docs use)
DEV = (
    "lcm count_bits number_sorting word_sorting spell_backward base_conversion power_function "
    "simple_equations decimal_arithmetic fraction_simplification time_intervals "
    "calendar_arithmetic count_primes prime_factorization family_relationships syllogism "
    "propositional_logic number_filtering word_sequence_reversal bitwise_arithmetic coin_flip "
    "dice gsm_symbolic"
).split()
USABLE = (0.05, 0.60)  # mean accuracy range of a task worth a head (issue 31)
CALIBRATION_SEED = 10_000  # references that size the answer budget come from another task seed


def answer_budget(spec: str, tokenizer: Any) -> int:
    refs = [p.answer for p in get_task(f"rg:{spec}", n=64, seed=CALIBRATION_SEED).prompts()]
    longest = max(len(tokenizer(f" {r}.", add_special_tokens=False)["input_ids"]) for r in refs)
    return int(min(48, max(4, longest + 2)))


def measure(store: Store) -> dict[str, Any]:
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in store.records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    rng = np.random.default_rng(0)
    labels = [np.array([r["label"] for r in rs], float) for rs in by_prompt.values()]
    maj = [
        majority_prompt([r["extracted"] for r in rs], y, len(rs), rng)
        for rs, y in zip(by_prompt.values(), labels)
    ]
    acc = float(np.mean(np.concatenate(labels)))
    pass_n = float(np.mean([y.max() for y in labels]))
    extracted = [r["extracted"] is not None for r in store.records]
    return {
        "prompts": len(by_prompt),
        "samples": len(store.records),
        "accuracy": acc,
        "pass_at_n": pass_n,
        "headroom": pass_n - acc,
        "majority": float(np.mean(maj)),
        "answered": float(np.mean(extracted)),
        "answer_tokens": float(np.mean([r["n_tokens"] for r in store.records])),
        "usable": USABLE[0] <= acc <= USABLE[1],
    }


def command() -> str:
    """This run's command line, as the results files quote it."""
    return f"`PYTHONPATH=src python {shlex.join(['benchmarks/bench_tasks.py', *sys.argv[1:]])}`"


def save(tag: str, res: dict[str, Any], title: str, lines: list[str]) -> None:
    """``res`` as RESULTS/tag.json and ``title``, the command and ``lines`` as RESULTS/tag.md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(res, indent=1))
    md = [f"# {title}", "", command(), "", *lines]
    (RESULTS / f"{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def write(rows: list[dict[str, Any]], cfg: dict[str, Any], note: str, tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps({"config": cfg, "rows": rows}, indent=1))
    n = cfg["n"]
    lines = [
        "# Development tasks (reasoning-gym) on the embedded model",
        "",
        f"{command()} "
        "(SmolLM2-135M-Instruct, float32 on this project's 2-core CPU box shared with other "
        f"jobs; {cfg['n_prompts']} prompts x {n} samples a task, "
        "3 exemplars drawn per prompt from the same generator with another seed, temperature 0.8, "
        "answer prefilled with 'The answer is'; labels from the generator's own verifier, right "
        "= score 1.0). A row named NAME runs the generator's default settings; a row NAME(k=v,...) "
        "runs easier settings, picked before they were measured for generators whose defaults "
        "leave the 135M model near 0.",
        "",
        f"Usable: mean accuracy in [{USABLE[0]:.2f}, {USABLE[1]:.2f}]. Headroom: pass@{n} - mean "
        f"accuracy. Answered: an answer was extracted. Tokens: the answer budget (max new tokens) "
        "and the mean answer length.",
        "",
        f"| task | mean accuracy | pass@{n} | headroom | majority@{n} | answered | tokens | "
        "usable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['accuracy']:.3f} | {r['pass_at_n']:.3f} | {r['headroom']:.3f} | "
            f"{r['majority']:.3f} | {r['answered']:.2f} | {r['max_new_tokens']} / "
            f"{r['answer_tokens']:.1f} | {'**yes**' if r['usable'] else 'no'} |"
        )
    usable = [r["task"] for r in rows if r["usable"]]
    lines += ["", f"Usable ({len(usable)} of {len(rows)}): {', '.join(usable) or 'none'}."]
    if note:
        lines += ["", note]
    (RESULTS / f"{tag}.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Heads on the development tasks (research/rg/PROTOCOL.md): choose the recipe on the val store,
# then report it on the test store: per task, leave one task out, and a learning curve.

K = 16  # best-of-N at N = 16, the issue's
#: the protocol's candidates: name -> (head type, --layers, params); None layers = the head's own
CANDIDATES: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "elhsr_swift": ("elhsr", "every:4", {}),
    "elhsr_top11": ("elhsr", "top:11", dict(DEMO_ELHSR)),
    "probe": ("probe", None, {}),
    "rank": ("rank", None, {}),
}
ROUND1 = tuple(CANDIDATES)
#: round 2 of the protocol: variants of rank (its defaults are RANK_DEFAULT)
ROUND2: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "rank_top4": ("rank", None, {"layers": "top:4"}),
    "rank_top16": ("rank", None, {"layers": "top:16"}),
    "rank_every2": ("rank", None, {"layers": "every:2"}),
    "rank_listwise": ("rank", None, {"loss": "listwise"}),
    "rank_l2_0.1": ("rank", None, {"l2": 0.1}),
}
CANDIDATES.update(ROUND2)
ROUND2_DERIVED = {"rank_vote": ("vote", "rank"), "rank+prior": ("prior", "rank")}
#: derived candidates: name -> (rule, head candidate); order = the protocol's simplicity order
DERIVED = {
    **ROUND2_DERIVED,
    "elhsr_top11_vote": ("vote", "elhsr_top11"),
    "elhsr_top11+prior": ("prior", "elhsr_top11"),
}
SIMPLICITY = [
    "elhsr_swift",
    "elhsr_top11",
    "probe",
    "rank",
    "elhsr_top11_vote",
    "elhsr_top11+prior",
]
FREE = ("majority", "mean_logprob", "self_certainty", "deepconf_vote")
#: the other training-free scorers every report carries (fitted on nothing: computed once)
FREE_MORE = tuple(SCORERS) + tuple(VOTES)


def fitless(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scorers of ``scores`` that fit nothing (computed once, passed to ``all_scores``)."""
    keep = ("random", "majority", "mean_logprob", *FREE_MORE)
    return {n: v for n, v in scores.items() if n in keep}


TIE = 0.01  # within this of the best mean BoN@16, the simpler candidate wins (the protocol's)


def fit_head(store: Store, idx: np.ndarray, cand: str) -> Any:
    head_type, spec, params = CANDIDATES[cand]
    cls = get_head_class(head_type)
    p = dict(params)
    if spec is not None:
        p = {**cls.layer_params(parse_layers(spec, store.fingerprint.n_layers)), **p}
    head = make_head(cls, **p)
    return head.fit(store.features(idx), store.labels[idx], store.prompt_ids[idx])


def families(store: Store) -> np.ndarray:
    return np.array([r["family"] for r in store.records])


def all_scores(
    train: Store,
    tr_idx: np.ndarray,
    test: Store,
    heads: dict[str, Any],
    free: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every scorer on every test sample: the heads, their votes and prior fusions (``DERIVED``),
    the free selectors (``free`` where already computed: they fit nothing) and the controls
    fitted on ``tr_idx``."""
    te = np.arange(len(test.records))
    g = test.prompt_ids
    s = {n: h.score(test.features(te)) for n, h in heads.items()}
    if free is None:
        s.update(baseline_scores(test, tr_idx, te, train_store=train))
    else:
        s.update(free)
        s.update(control_scores(train, tr_idx, test, te))
    s["qa_lookup"] = qa_lookup(train, tr_idx, test)
    for name, (rule, base) in DERIVED.items():
        if base in s and name not in s:
            s[name] = (
                add_head_votes({base: s[base]}, [base], g)[base + "_vote"]
                if rule == "vote"
                else minmax_fusion([s[base], s["answer_prior"]], g)
            )
    return s


def qa_lookup(train: Store, tr_idx: np.ndarray, test: Store) -> np.ndarray:
    """The answer prior keyed by (question, answer): how often this exact answer to this exact
    question was right in training. Where a generator's questions repeat across stores, it is the
    lookup table a head could be matching by remembering questions."""
    recs = train.records
    keys = [(prompt_question(train, recs[i]), recs[i]["extracted"]) for i in tr_idx]
    te = [(prompt_question(test, r), r["extracted"]) for r in test.records]
    return AnswerPriorScorer().fit(keys, train.labels[tr_idx]).score(te)


def per_prompt(
    test: Store, scores: dict[str, np.ndarray], mask: np.ndarray, votes: tuple[str, ...] = ()
) -> dict[str, dict]:
    """BoN@16 of every scorer on every prompt of ``mask``'s samples (votes as votes)."""
    y, g = test.labels[mask], test.prompt_ids[mask]
    ex = [r["extracted"] for r, m in zip(test.records, mask) if m]
    out = {}
    for name, s in scores.items():
        keep = vote_keep(name, votes)
        vote = (np.asarray(s, float)[mask], keep) if keep is not None else None
        rng = np.random.default_rng(0)
        out[name] = bon_per_prompt(name, np.asarray(s, float)[mask], y, g, ex, K, rng, vote=vote)
    return out


def summary(
    test: Store,
    scores: dict[str, np.ndarray],
    mask: np.ndarray,
    main: str,
    votes: tuple[str, ...] = (),
) -> dict:
    """Mean accuracy, pass@16, BoN@16 with CI of every scorer, gap closed, and ``main`` minus
    each other scorer paired over prompts (mean and 95% CI)."""
    pp = per_prompt(test, scores, mask, votes)
    y, g = test.labels[mask], test.prompt_ids[mask]
    by = by_group(g)
    acc = float(np.mean([y[i].mean() for i in by.values()]))
    pk = float(np.mean([y[i].max() for i in by.values()]))
    bon = {n: float(np.mean(list(v.values()))) for n, v in pp.items()}
    ex = np.array([str(r["extracted"]) for r, m in zip(test.records, mask) if m])
    out = {
        "prompts": len(by),
        # how many different answers a prompt's samples give: small answer spaces are where
        # majority and the answer prior are strong
        "distinct_answers": float(np.mean([len(set(ex[i].tolist())) for i in by.values()])),
        "accuracy": acc,
        "pass_at_16": pk,
        "headroom": pk - acc,
        "bon": bon,
        "bon_ci": {n: list(bootstrap_ci(v)) for n, v in pp.items()},
        "gap_closed": {n: gap_closed(b, acc, pk) for n, b in bon.items()},
        "vs": {},
    }
    for other in pp:
        if other != main:
            d = np.array([pp[main][p] - pp[other][p] for p in by])
            out["vs"][other] = {"delta": float(d.mean()), "ci": list(bootstrap_ci(d))}
    return out


def seen_questions(train: Store, test: Store) -> np.ndarray:
    asked = {prompt_question(train, r) for r in train.records}
    return np.array([prompt_question(test, r) in asked for r in test.records])


def choose(args: argparse.Namespace) -> None:
    train, val = Store(args.train), Store(args.val)
    tr = np.arange(len(train.records))
    t0 = time.perf_counter()
    heads = {c: fit_head(train, tr, c) for c in ROUND1}
    fit_s = time.perf_counter() - t0
    scores = all_scores(train, tr, val, heads)
    fam = families(val)
    tasks = sorted(set(fam.tolist()))
    rows = {t: summary(val, scores, fam == t, "elhsr_top11") for t in tasks}
    means = {c: float(np.mean([rows[t]["bon"][c] for t in tasks])) for c in SIMPLICITY}
    best = max(means.values())
    chosen = next(c for c in SIMPLICITY if means[c] >= best - TIE)
    res = {"train": args.train, "val": args.val, "means": means, "chosen": chosen, "rows": rows}
    res["fit_seconds"] = fit_s
    lines = [
        f"BoN@{K} on the val store (task seed 2, {sum(r['prompts'] for r in rows.values())} "
        f"prompts x {K}); every head fitted on all train prompts (task seed 0). Choice: the best "
        f"mean over the {len(tasks)} tasks; within {TIE} of it the simpler candidate "
        f"(order {', '.join(SIMPLICITY)}).",
        "",
        "| task | acc | pass@16 | " + " | ".join(SIMPLICITY + list(FREE) + ["answer_prior"]) + " |",
        "|---" * (3 + len(SIMPLICITY) + len(FREE) + 1) + "|",
    ]
    for t in tasks:
        r = rows[t]
        cells = [f"{r['bon'].get(c, float('nan')):.3f}" for c in SIMPLICITY + list(FREE)]
        cells.append(f"{r['bon'].get('answer_prior', float('nan')):.3f}")
        lines.append(
            f"| {t} | {r['accuracy']:.3f} | {r['pass_at_16']:.3f} | " + " | ".join(cells) + " |"
        )
    lines.append(
        "| **mean** | | | "
        + " | ".join(f"**{means[c]:.3f}**" for c in SIMPLICITY)
        + " |" * (len(FREE) + 2)
    )
    lines += ["", f"**Chosen: `{chosen}`** (fits took {fit_s:.0f} s on the 2-core CPU)."]
    save(
        "tasks_recipe",
        res,
        "The default recipe, chosen on the val store (research/rg/PROTOCOL.md)",
        lines,
    )


def choose2(args: argparse.Namespace) -> None:
    """Round 2 (research/rg/PROTOCOL.md): rank's variants in-task and left out, on the val store."""
    train, val = Store(args.train), Store(args.val)
    ftr, fva = families(train), families(val)
    tasks = sorted(set(fva.tolist()))
    tr = np.arange(len(train.records))
    names = ["rank", *ROUND2]
    heads = {c: fit_head(train, tr, c) for c in names}
    scores = all_scores(train, tr, val, heads)
    allnames = [*names, *ROUND2_DERIVED]
    rows = {t: summary(val, scores, fva == t, "rank")["bon"] for t in tasks}
    in_task = {c: float(np.mean([rows[t][c] for t in tasks])) for c in allnames}
    left: dict[str, list[float]] = {c: [] for c in allnames}
    free = fitless(scores)
    for t in tasks:
        idx = np.flatnonzero(ftr != t)
        s_t = all_scores(train, idx, val, {c: fit_head(train, idx, c) for c in names}, free)
        b = summary(val, s_t, fva == t, "rank")["bon"]
        for c in allnames:
            left[c].append(b[c])
        log.info("val, left out %s: %s", t, {c: round(b[c], 3) for c in allnames})
    left_mean = {c: float(np.mean(v)) for c, v in left.items()}
    best = max(in_task, key=lambda c: in_task[c])
    chosen = best if in_task[best] > in_task["rank"] + TIE else "rank"
    transfer = max(left_mean, key=lambda c: left_mean[c])
    res = {"in_task": in_task, "left_out": left_mean, "chosen": chosen, "transfer": transfer}
    res["rows"] = rows
    L = [
        "Mean BoN@16 over the nine tasks of the val store; in-task: fitted on all train prompts; "
        "left out: fitted on the other eight tasks' train prompts.",
        "",
        "| candidate | in-task | left out |",
        "|---|---|---|",
        *[f"| {c} | {in_task[c]:.3f} | {left_mean[c]:.3f} |" for c in allnames],
        "",
        f"In-task choice: **{chosen}** (replaces rank only above rank + {TIE}). "
        f"Transfer choice: **{transfer}**.",
    ]
    save(
        "tasks_recipe_round2",
        res,
        "Round 2: variants of rank on the val store (research/rg/PROTOCOL.md)",
        L,
    )


def recipe_scores(
    train: Store,
    tr_idx: np.ndarray,
    test: Store,
    recipe: str,
    free: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``all_scores`` with the recipe (a candidate or a derived one) fitted on ``tr_idx``, under
    the name ``"recipe"``."""
    base = DERIVED[recipe][1] if recipe in DERIVED else recipe
    s = all_scores(train, tr_idx, test, {base: fit_head(train, tr_idx, base)}, free)
    s["recipe"] = s[recipe]
    return s


def as_votes(recipe: str) -> tuple[str, ...]:
    """``summary``'s ``votes`` for a recipe: ``("recipe",)`` where the recipe is a vote (its
    scores are vote weights, read as a vote, not ranked)."""
    return ("recipe",) if vote_keep(recipe) is not None else ()


def curve_full(
    train: RecordsView,
    idx: np.ndarray,
    test: Store,
    transfer: str,
    free: dict[str, np.ndarray],
) -> dict[str, float]:
    """The learning curve's last point for every task: ``transfer`` fitted on training records
    ``idx``, BoN@16 on each task's test prompts."""
    s = recipe_scores(train, idx, test, transfer, free)
    fte = families(test)
    return {
        t: summary(test, s, fte == t, "recipe", as_votes(transfer))["bon"]["recipe"]
        for t in sorted(set(fte.tolist()))
    }


def extend(args: argparse.Namespace) -> None:
    """The learning curve at every labelled prompt of the train store and of ``--more`` (the
    task's next prompts, ``hsrm sample --skip-prompts``): for each task, the other tasks' train
    prompts plus all of its own in both stores. Adds to tasks_heads.json and rewrites the table."""
    res = json.loads((RESULTS / "tasks_heads.json").read_text())
    train, more, test = Store(args.train), Store(args.more), Store(args.test)
    union = StoreUnion([train, more])
    fu, in_train = families(union), np.arange(len(union)) < len(train)
    te = np.arange(len(test.records))
    free = fitless(baseline_scores(test, np.flatnonzero(in_train), te, train_store=train))
    transfer = res["transfer"]
    # every train prompt, with `transfer` (the point report wrote before it used `transfer` there)
    full = curve_full(train, np.flatnonzero(in_train), test, transfer, free)
    ftr = families(train)
    for t in res["curve"]:
        n_t = len(set(train.prompt_ids[ftr == t].tolist()))
        res["curve"][t][str(n_t)] = [full[t]]
        idx = np.flatnonzero((in_train & (fu != t)) | (fu == t))
        k = len(set(union.prompt_ids[fu == t].tolist()))
        if k <= n_t:
            raise SystemExit(
                f"{args.more} asks {t}'s prompts of {args.train} again: sample it "
                "with the same --task-seed and --skip-prompts"
            )
        res["curve"][t][str(k)] = [curve_full(union, idx, test, transfer, free)[t]]
        log.info("curve %s at k=%d: %.3f", t, k, res["curve"][t][str(k)][0])
    res["more"] = args.more
    write_report(res)


def ci_text(d: dict[str, Any]) -> str:
    return f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def report(args: argparse.Namespace) -> None:
    train, test = Store(args.train), Store(args.test)
    recipe = args.recipe or json.loads((RESULTS / "tasks_recipe.json").read_text())["chosen"]
    transfer = args.transfer or recipe
    rv, tv = as_votes(recipe), as_votes(transfer)
    ftr, fte = families(train), families(test)
    tasks = sorted(set(fte.tolist()))
    tr_all = np.arange(len(train.records))
    t0 = time.perf_counter()
    s_all = recipe_scores(train, tr_all, test, recipe)
    free = fitless(s_all)
    per_task = {t: summary(test, s_all, fte == t, "recipe", rv) for t in tasks}
    room = [t for t in tasks if per_task[t]["headroom"] >= 0.15]
    in_room = np.isin(fte, room)
    pooled = summary(test, s_all, in_room, "recipe", rv)
    seen = seen_questions(train, test)
    unseen = {
        "pooled": summary(test, s_all, in_room & ~seen, "recipe", rv)
        if (in_room & ~seen).any()
        else None,
        "per_task": {
            t: summary(test, s_all, (fte == t) & ~seen, "recipe", rv)
            for t in tasks
            if ((fte == t) & ~seen).any()
        },
        "seen_prompts": int(len(set(test.prompt_ids[seen]))),
    }
    log.info("recipe on all tasks: %.0f s", time.perf_counter() - t0)
    loto, own = {}, {}
    for t in tasks:
        s_out = recipe_scores(train, np.flatnonzero(ftr != t), test, transfer, free)
        s_out["in_task"] = s_all["recipe"]
        loto[t] = summary(test, s_out, fte == t, "recipe", tv + (("in_task",) if rv else ()))
        s_own = recipe_scores(train, np.flatnonzero(ftr == t), test, recipe, free)
        own[t] = summary(test, s_own, fte == t, "recipe", rv)["bon"]["recipe"]
        log.info("leave out %s: %.3f (in-task %.3f)", t, loto[t]["bon"]["recipe"], own[t])
    curve: dict[str, dict[str, list[float]]] = {}
    rng = np.random.default_rng(0)
    full = curve_full(train, tr_all, test, transfer, free)
    for t in tasks:
        pids_t = np.array(sorted(set(train.prompt_ids[ftr == t].tolist())))
        curve[t] = {"0": [loto[t]["bon"]["recipe"]], str(len(pids_t)): [full[t]]}
        for k in args.ks:
            if k >= len(pids_t):
                continue
            curve[t][str(k)] = []
            for _ in range(args.draws if k < 128 else 1):
                pick = set(rng.choice(pids_t, k, replace=False).tolist())
                idx = np.flatnonzero((ftr != t) | np.isin(train.prompt_ids, list(pick)))
                s_k = recipe_scores(train, idx, test, transfer, free)
                curve[t][str(k)].append(summary(test, s_k, fte == t, "recipe", tv)["bon"]["recipe"])
        log.info("curve %s: %s", t, {k: round(float(np.mean(v)), 3) for k, v in curve[t].items()})
    res = {
        "train": args.train,
        "test": args.test,
        "recipe": recipe,
        "transfer": transfer,
        "headroom_tasks": room,
        "per_task": per_task,
        "pooled_headroom": pooled,
        "unseen_questions": unseen,
        "leave_one_out": loto,
        "own_task_only": own,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
    }
    write_report(res)


def write_report(res: dict[str, Any]) -> None:
    recipe, room = res["recipe"], res["headroom_tasks"]
    cols = ["recipe", *FREE, "answer_prior", "qa_lookup"]
    head = (
        "| task | prompts | answers | acc | pass@16 | "
        + " | ".join(cols)
        + " | gap closed | vs majority | vs answer prior | vs qa_lookup |"
    )
    sep = "|---" * (9 + len(cols)) + "|"

    def row(name: str, r: dict[str, Any]) -> str:
        b = r["bon"]
        return (
            f"| {name} | {r['prompts']} | {r['distinct_answers']:.1f} | {r['accuracy']:.3f} | {r['pass_at_16']:.3f} | "
            + " | ".join(f"{b[c]:.3f}" for c in cols)
            + f" | {r['gap_closed']['recipe']:.0%} | {ci_text(r['vs']['majority'])} | "
            f"{ci_text(r['vs']['answer_prior'])} | {ci_text(r['vs']['qa_lookup'])} |"
        )

    L = [
        f"Recipe: `{recipe}` (chosen on the val store: tasks_recipe.md). Fitted on the train store "
        "(task seed 0, 256 prompts x 4 a task), scored on the test store (task seed 1, 64 prompts x "
        f"16 a task); BoN@{K}, 95% bootstrap CIs over prompts, differences paired over prompts. "
        f"Headroom tasks (pass@16 - acc >= 0.15 on the test store): {', '.join(room)}.",
        "",
        "## Per task, the recipe fitted on all nine tasks",
        "",
        "Answers: the mean number of different answers among a prompt's 16 samples. qa_lookup: the "
        "answer prior keyed by (question, answer), the table a head could match by remembering "
        "questions the train store asked (tasks with few distinct questions repeat them).",
        "",
        head,
        sep,
        *[row(t, r) for t, r in res["per_task"].items()],
        row("**headroom tasks, pooled**", res["pooled_headroom"]),
    ]
    beats = {t: all(res["per_task"][t]["vs"][f]["delta"] > 0 for f in FREE) for t in room}
    L += [
        "",
        f"Beats majority, mean log-prob, self-certainty and DeepConf's vote (point estimates) on "
        f"{sum(beats.values())} of {len(room)} headroom tasks"
        + (
            f"; not on {', '.join(t for t, b in beats.items() if not b)}."
            if not all(beats.values())
            else "."
        ),
        "",
        f"## Control: test prompts whose question the train store never asked "
        f"({res['unseen_questions']['seen_prompts']} test prompts repeat a training question)",
        "",
        head,
        sep,
        *[row(t, r) for t, r in res["unseen_questions"]["per_task"].items()],
        *(
            [row("**headroom tasks, pooled**", res["unseen_questions"]["pooled"])]
            if res["unseen_questions"]["pooled"]
            else []
        ),
        "",
        f"## Leave one task out: `{res['transfer']}` fitted on the other eight tasks, no label of this one",
        "",
        "| task | left out | in-task (all nine) | own task only | majority | mean log-prob | "
        "answer prior (in-task) | vs majority | vs mean log-prob |",
        "|---" * 9 + "|",
    ]
    wins = 0
    for t, r in res["leave_one_out"].items():
        b = r["bon"]
        ok = r["vs"]["majority"]["delta"] > 0 and r["vs"]["mean_logprob"]["delta"] > 0
        wins += ok and t in room
        L.append(
            f"| {t}{'' if t in room else ' (no headroom)'} | {b['recipe']:.3f} | {b['in_task']:.3f} | "
            f"{res['own_task_only'][t]:.3f} | {b['majority']:.3f} | {b['mean_logprob']:.3f} | "
            f"{res['per_task'][t]['bon']['answer_prior']:.3f} | {ci_text(r['vs']['majority'])} | "
            f"{ci_text(r['vs']['mean_logprob'])} |"
        )
    L += [
        "",
        f"Left out, beats majority and mean log-prob (point estimates): {wins} of {len(room)} "
        "headroom tasks. The answer prior needs labels of the task (it is keyed by answer).",
        "",
        f"## Learning curve: `{res['transfer']}` on the other eight tasks plus k labelled prompts of this one",
        "",
    ]
    ks = sorted({int(k) for c in res["curve"].values() for k in c})
    L += ["| task | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for t, c in res["curve"].items():
        L.append(
            f"| {t} | "
            + " | ".join(f"{np.mean(c[str(k)]):.3f}" if str(k) in c else "" for k in ks)
            + " |"
        )
    mean_room = [
        np.mean([np.mean(res["curve"][t][str(k)]) for t in room])
        if all(str(k) in res["curve"][t] for t in room)
        else float("nan")
        for k in ks
    ]
    L.append("| **headroom tasks, mean** | " + " | ".join(f"**{v:.3f}**" for v in mean_room) + " |")
    L += [
        "",
        f"Every point is `{res['transfer']}`. k = 0 is the left-out head; the largest k of the "
        "train store (256) is all its prompts of the task"
        + (
            f", and 512 adds the task's next 256 prompts ({res['more']}, `extend`)"
            if res.get("more")
            else ""
        )
        + ". Draws of k prompts: the mean of `--draws` draws below 128, one at 128.",
    ]
    save(
        "tasks_heads", res, "Heads on the development tasks (issue 31; research/rg/PROTOCOL.md)", L
    )


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="stage", required=True)
    ap = sub.add_parser("table", help="sample every task, write the development table")
    ap.add_argument("--tasks", default=";".join(DEV), help="generator specs, ';'-separated")
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--task-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="keep rows already in the results")
    ap.add_argument("--note", default="", help="a line for the table (e.g. what was left out)")
    ap.add_argument("--tag", default="tasks_dev", help="results file name")
    ap.add_argument(
        "--table-only", action="store_true", help="write the table of the kept rows, sample none"
    )
    ap.add_argument(
        "--rows-from",
        action="append",
        default=[],
        help="also keep the rows of this results file (a run of other tasks in parallel)",
    )
    ch = sub.add_parser("choose", help="fit the protocol's candidates, choose on the val store")
    ch.add_argument("--round", type=int, default=1, choices=(1, 2), help="the protocol's round")
    rp = sub.add_parser("report", help="the recipe on the test store: per task, left out, curve")
    for p in (ch, rp):
        p.add_argument("--train", required=True, help="train store (task seed 0)")
    ch.add_argument("--val", required=True, help="val store (task seed 2)")
    rp.add_argument("--test", required=True, help="test store (task seed 1)")
    rp.add_argument("--recipe", default="", help="default: the choice in tasks_recipe.json")
    rp.add_argument(
        "--transfer", default="", help="the head left out and on the curve (default: --recipe)"
    )
    rp.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128])
    rp.add_argument("--draws", type=int, default=3, help="draws of k prompts below k=128")
    ex = sub.add_parser("extend", help="the learning curve with a second train store (--more)")
    ex.add_argument("--train", required=True, help="train store (task seed 0)")
    ex.add_argument("--more", required=True, help="the task's next prompts (--skip-prompts)")
    ex.add_argument("--test", required=True, help="test store (task seed 1)")
    args = top.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.stage != "table":
        if args.stage == "report":
            return report(args)
        if args.stage == "extend":
            return extend(args)
        return choose(args) if args.round == 1 else choose2(args)
    if args.table_only and args.resume:  # the table would replace the resumed file's other rows
        ap.error("--table-only writes --tag's file: take its rows with --rows-from, not --resume")
    torch.set_num_threads(args.threads)
    cfg = {
        k: v
        for k, v in vars(args).items()
        if k not in ("stage", "tasks", "resume", "note", "tag", "rows_from", "table_only")
    }
    old: dict[str, dict[str, Any]] = {}
    tags = [args.tag] if args.resume else []
    for tag in [*tags, *args.rows_from]:  # rows measured with the same settings are kept
        path = RESULTS / f"{tag}.json"
        prev = json.loads(path.read_text()) if path.exists() else {}
        if prev.get("config") == cfg:
            old.update({r["task"]: r for r in prev["rows"]})
    specs = [s.strip() for s in args.tasks.split(";") if s.strip()]
    if args.table_only:  # the table of what was measured; the rest is named, not sampled
        missing = [s for s in specs if s not in old]
        note = args.note + (f" Not measured: {', '.join(missing)}." if missing else "")
        write([old[s] for s in specs if s in old], cfg, note.strip(), args.tag)
        return
    lm = load_model()  # once: every task samples the same model
    rows = []
    for spec in specs:
        if spec in old:
            rows.append(old[spec])
            continue
        budget = answer_budget(spec, lm.tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = sample(
                SampleRunConfig(
                    out=f"{tmp}/s",
                    task=f"rg:{spec}",
                    n_prompts=args.n_prompts,
                    n=args.n,
                    shots=3,
                    fewshot="per_prompt",
                    task_seed=args.task_seed,
                    max_new_tokens=budget,
                    layers="last",
                    pool="mean",  # only the labels are read here
                    threads=args.threads,
                ),
                lm=lm,
                progress=False,
            )
            row = {"task": spec, "max_new_tokens": budget, **measure(store)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(
            rows, cfg, args.note, args.tag
        )  # after every task: a killed run keeps what it measured


if __name__ == "__main__":
    main()
