"""Early pruning of best-of-N samples, and its offline simulation over a fully sampled store.

Policies decide, per prompt, at which token each sample stops (``len`` = not pruned):

- ``head``: at each checkpoint (answer tokens generated so far), a head trained on answer prefixes
  (``prefix_probe_scores``: the pooled probe on states averaged over the first t tokens, labelled
  with the full answer's correctness) scores the samples still running, and the lowest ``frac``
  of them stop.
- ``deepconf``: DeepConf's online mode (arXiv 2508.15260, Alg. 2): the first ``n_init`` samples run
  to the end; the stopping threshold is the (100 - eta)th percentile of their lowest group
  confidences; every other sample stops at the first token where its sliding-window group
  confidence falls below it (eta = 90: DeepConf-high, 10: DeepConf-low). The window is clipped to
  ``window`` tokens, 2048 in the paper; answers here are 15-40 tokens.
- ``threshold``: the same prefix head, but a sample stops when its score falls below a fixed
  threshold per checkpoint (set on the training store, e.g. a quantile of its out-of-fold scores),
  keeping the ``min_keep`` best of every prompt running. Unlike ``head``, the number stopped varies
  by prompt: a prompt whose samples all look wrong loses most of them, one whose samples look right
  loses none.
- ``random``: stops as many samples at each checkpoint as a ``head`` or ``threshold`` run did,
  chosen at random.
- ``consensus``: DeepConf's other online half, *adaptive sampling* (arXiv 2508.15260, Alg. 2:
  stop drawing traces for a question once the vote of those drawn has consensus >= tau, 0.95 in
  the paper): a prompt's first ``warmup`` samples run to the end, and if the most common extracted
  answer holds >= ``tau`` of them the prompt's other samples are never started (stop at token 0).
  Its control stops as many prompts after their warm-up, chosen at random.

Best-of-N is then taken over the samples that finished, with the same selector as without pruning.
The stopping rules are the online hooks' own (``hsrm.capture.prune``: ``stop_lowest``,
``deepconf_threshold``, ``has_consensus``), so the replay and a live run cannot drift apart.

Simulation assumption: a pruned sample's tokens up to its stop are exactly its tokens in the full
store, and the samples that survive are exactly the full store's. That holds when each sample's
random stream is independent of the others', as in hsrm's sampler, which draws every sample's
uniforms up front (``hsrm.capture``): a live ``hsrm sample --prune`` run keeps the unpruned run's
samples token for token (checked in research/quality/results/quality_pruning_cot2_seed12.md), so the
replay is exact, sample for sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hsrm import metrics as M
from hsrm.bon.scorers import group_confidences, lowest_group_confidence, weighted_vote_prompt
from hsrm.capture.prune import deepconf_threshold, has_consensus, stop_lowest

CHECKPOINTS = (4, 8, 12, 16)


def prefix_probe_scores(
    store,
    idx: np.ndarray,
    checkpoints: Sequence[int] = CHECKPOINTS,
    folds: int = 3,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Out-of-fold (by prompt) prefix-probe scores of records ``idx`` at every checkpoint, trained
    on the final answers' correctness or on ``labels`` (aligned with ``idx``)."""
    from hsrm.bon.quality import POOLED_DEFAULT, PooledProbe, pooled_states
    from hsrm.splits import prompt_folds

    y = store.labels[idx] if labels is None else np.asarray(labels)
    g = store.prompt_ids[idx]
    fold = prompt_folds(g, folds, seed)
    out = {}
    for t in checkpoints:
        P = pooled_states(store, idx, prefix=t)
        s = np.zeros(len(idx))
        for f in range(folds):
            a, b = fold != f, fold == f
            probe = PooledProbe(
                POOLED_DEFAULT["layers"],
                POOLED_DEFAULT["C"],
                False,
                store.layers,
                store.fingerprint.n_layers,
            )
            s[b] = probe.fit(P[a], y[a], g[a]).score(P[b], None)
        out[int(t)] = s
    return out


def prefix_ties(
    token_ids: Sequence[Sequence[int]], labels: np.ndarray, groups: np.ndarray, t: int
) -> dict[str, float]:
    """What any reader of answer prefixes can know at answer token ``t``.

    Two samples of a prompt whose first ``t`` answer tokens are identical have identical hidden
    states there, so every prefix head (or confidence, or text check) scores them alike. On the
    CoT family most answers open by copying the question, and at token 4 about 92% of a prompt's
    (right, wrong) pairs are still identical (``research/quality/results/quality_prune_needed.md``).

    Returns ``tied``: the share of within-prompt (right, wrong) pairs whose first ``t`` tokens are
    identical (pooled over pairs), and ``auroc_ceiling``: the highest within-prompt AUROC a prefix
    score can reach, ``1 - tied_p / 2`` averaged over the prompts with both classes, as
    ``metrics.within_prompt_auroc`` averages (every untied pair ordered right, every tie at 1/2)."""
    y = np.asarray(labels).astype(bool)
    tied = pairs = 0
    ceil = []
    for rows in M.by_group(np.asarray(groups)).values():
        keys: dict[tuple[int, ...], list[int]] = {}
        for i in rows:
            keys.setdefault(tuple(token_ids[i][:t]), [0, 0])[int(y[i])] += 1
        n_right = int(y[rows].sum())
        n_pairs = n_right * (len(rows) - n_right)
        if n_pairs == 0:
            continue
        tp = sum(w * r for w, r in keys.values())  # (right, wrong) pairs within one prefix
        tied, pairs = tied + tp, pairs + n_pairs
        ceil.append(1 - 0.5 * tp / n_pairs)
    return {
        "tied": tied / pairs if pairs else float("nan"),
        "auroc_ceiling": float(np.mean(ceil)) if ceil else float("nan"),
    }


def head_stops(
    lens: np.ndarray, scores: dict[int, np.ndarray], checkpoints: Sequence[int], frac: float
) -> tuple[np.ndarray, list[int]]:
    """One prompt: stop positions, and how many stopped at each checkpoint."""
    stop = lens.copy()
    running = np.ones(len(lens), bool)
    counts = []
    for t in checkpoints:
        live = np.flatnonzero(running & (lens > t))
        worst = stop_lowest(scores[t], live, int(running.sum()), frac)  # the online rule
        stop[worst], running[worst] = t, False
        counts.append(len(worst))
    return stop, counts


def threshold_stops(
    lens: np.ndarray,
    scores: dict[int, np.ndarray],
    checkpoints: Sequence[int],
    thresholds: Sequence[float],
    min_keep: int,
) -> tuple[np.ndarray, list[int]]:
    """One prompt: stop positions, and how many stopped at each checkpoint. At checkpoint t the
    running samples (longer than t) scoring below that checkpoint's threshold stop, worst first,
    while more than ``min_keep`` samples run."""
    stop = lens.copy()
    running = np.ones(len(lens), bool)
    counts = []
    for t, thr in zip(checkpoints, thresholds, strict=True):
        live = np.flatnonzero(running & (lens > t))
        low = live[scores[t][live] < thr]
        m = max(0, min(len(low), int(running.sum()) - min_keep))
        if m > 0:
            worst = low[np.argsort(scores[t][low], kind="stable")[:m]]
            stop[worst], running[worst] = t, False
        counts.append(m)
    return stop, counts


def random_stops(
    lens: np.ndarray, counts: list[int], checkpoints: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    stop = lens.copy()
    running = np.ones(len(lens), bool)
    for t, m in zip(checkpoints, counts):
        live = np.flatnonzero(running & (lens > t))
        m = min(m, len(live))
        if m > 0:
            pick = rng.choice(live, size=m, replace=False)
            stop[pick], running[pick] = t, False
    return stop


def consensus_stops(
    answers: Sequence[object], lens: np.ndarray, warmup: int, tau: float
) -> np.ndarray:
    """One prompt, samples in index order: stop positions under consensus stopping (see the module
    docstring); the samples after the warm-up stop at token 0 when its answers agree."""
    stop = np.array(lens).copy()
    if has_consensus(answers[:warmup], tau):
        stop[warmup:] = 0
    return stop


def deepconf_stops(confs: list[np.ndarray], n_init: int, eta: float, window: int) -> np.ndarray:
    """One prompt: DeepConf online stopping (see the module docstring)."""
    lens = np.array([len(c) for c in confs])
    stop = lens.copy()
    warm = [lowest_group_confidence(_t(c), window) for c in confs[:n_init]]
    thr = deepconf_threshold(np.asarray(warm), eta)
    for i in range(n_init, len(confs)):
        c = confs[i]
        if len(c) < window:
            continue  # too short for a full window: never stopped
        g = group_confidences(_t(c), window).numpy()  # g[j] = mean of tokens j .. j+window-1
        below = np.flatnonzero(g < thr)
        if len(below):
            stop[i] = int(below[0]) + window
    return stop


def _t(c: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(c, np.float32))


def select(
    name: str, answers: list, y: np.ndarray, s: dict[str, np.ndarray], rng: np.random.Generator
) -> float:
    """Correctness of the selector's pick among one prompt's finished samples. ``NAME``: the
    sample with the highest ``s[NAME]``; ``NAME_pvote``: a vote weighted by sigmoid(``s[NAME]``)
    (a head's logit read as P(right)); ``NAME_softmax_vote``: weighted by its softmax within the
    prompt's finished samples; ``NAME_vote``: the best-of-N reports' head vote, weighted by
    ``exp(z)`` of the within-prompt z-score (``metrics.score_vote_weights``)."""
    if name == "majority":
        return M.majority_prompt(answers, y, len(y), rng)
    if name == "deepconf_vote":
        return weighted_vote_prompt(answers, y, s["confidence"], len(y), rng, keep=0.9)
    if name.endswith("_softmax_vote"):
        v = np.asarray(s[name[: -len("_softmax_vote")]], float)
        return M.vote_prompt(answers, y, np.exp(v - v.max()), len(y), rng)
    if name.endswith("_pvote"):
        v = np.asarray(s[name[: -len("_pvote")]], float)
        return M.vote_prompt(answers, y, 1 / (1 + np.exp(-v)), len(y), rng)
    if name.endswith("_vote"):
        v = np.asarray(s[name[: -len("_vote")]], float)
        w = M.score_vote_weights(v, np.zeros(len(v)))
        return M.vote_prompt(answers, y, w, len(y), rng)
    v = s[name]
    return float(y[v == v.max()].mean())


def pruning_curve(
    store,
    idx: np.ndarray,
    prefix_scores: dict[int, np.ndarray],
    selectors: Sequence[str] = ("majority", "mean_logprob", "deepconf_vote"),
    head_settings: Sequence[tuple[tuple[int, ...], float]] = (
        ((8,), 0.5),
        ((4, 8), 0.5),
        ((4, 8, 12), 0.5),
        ((4,), 0.75),
        ((4, 8), 0.75),
    ),
    deepconf_settings: Sequence[tuple[int, float, int]] = ((4, 90, 8), (4, 10, 8), (4, 90, 4)),
    threshold_settings: Sequence[tuple[tuple[int, ...], tuple[float, ...], int]] = (),
    consensus_settings: Sequence[tuple[int, float]] = (),
    policies: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    random_repeats: int = 20,
    seed: int = 0,
    extra_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Tokens generated vs BoN@N (N = every sample of a prompt) for each policy and selector.
    ``extra_scores``: more per-sample scores (aligned with ``idx``, e.g. a final head's ``head``)
    that selectors may name (see ``select``). ``threshold_settings``: (checkpoints, thresholds,
    min_keep) of ``threshold_stops``, each beside random pruning at its budget.
    ``consensus_settings``: (warmup, tau) of ``consensus_stops``, each beside the same number of
    prompts stopped after their warm-up, chosen at random (``random_repeats`` draws).
    ``policies``: more policies by name, each mapping one prompt's rows (positions in ``idx``, in
    sample order) to their stop positions (family ``custom``, no control). Each point keeps
    its per-prompt BoN (``per_prompt``; random: the mean over draws) for paired CIs against
    ``none``."""
    recs = store.records
    groups = M._by_group(store.prompt_ids[idx])
    y_all = store.labels[idx]
    lens_all = np.array([recs[i]["n_tokens"] for i in idx])
    conf_all = [store.token_stat(int(i), "confidence").float().numpy() for i in idx]
    ext_all = [recs[i]["extracted"] for i in idx]
    rng = np.random.default_rng(seed)
    # sample-level scores of a finished sample are those of its full answer: computed once
    sc_all = {
        "mean_logprob": np.array(
            [float(v.mean()) if len(v) else 0.0 for v in (store.logprobs(int(i)) for i in idx)]
        ),
        "confidence": np.array([lowest_group_confidence(_t(c)) for c in conf_all]),
        **{k: np.asarray(v, float) for k, v in (extra_scores or {}).items()},
    }

    def run(stops_of) -> tuple[int, dict[str, float], dict[str, list[float]]]:
        tok = 0
        acc: dict[str, list[float]] = {s: [] for s in selectors}
        for g, rows in groups.items():
            stop = stops_of(g, rows)
            tok += int(stop.sum())
            done = np.flatnonzero(stop >= lens_all[rows])
            if len(done) == 0:
                done = np.array([int(np.argmax(stop))])
            r = rows[done]
            sc = {k: v[r] for k, v in sc_all.items()}
            for s in selectors:
                acc[s].append(select(s, [ext_all[j] for j in r], y_all[r], sc, rng))
        return tok, {s: float(np.mean(v)) for s, v in acc.items()}, acc

    points: list[dict[str, Any]] = []
    full_tok, full_bon, full_pp = run(lambda g, rows: lens_all[rows].copy())
    points.append(
        {"policy": "none", "family": "none", "tokens": full_tok, "bon": full_bon,
         "per_prompt": full_pp}
    )  # fmt: skip

    def with_random(stops, cps: tuple[int, ...], point: dict[str, Any]) -> None:
        """``stops(lens, scores) -> (stop, counts)`` replayed, then random pruning that stops as
        many samples of each prompt at each checkpoint (``random_repeats`` draws)."""
        counts: dict[Any, list[int]] = {}

        def hs(g, rows):
            st, c = stops(lens_all[rows], {t: prefix_scores[t][rows] for t in cps})
            counts[g] = c
            return st

        tok, bon, pp = run(hs)
        points.append({**point, "tokens": tok, "bon": bon, "per_prompt": pp,
                       "checkpoints": list(cps)})  # fmt: skip
        random_point(
            point["policy"],
            lambda: lambda g, rows: random_stops(lens_all[rows], counts[g], cps, rng),
        )

    def random_point(name: str, draw: Callable[[], Callable]) -> None:
        """The random control of policy ``name``: ``random_repeats`` runs of ``draw()``'s stops,
        averaged into one point."""
        runs = [run(draw()) for _ in range(random_repeats)]
        points.append(
            {
                "policy": f"random, same budget as {name}",
                "family": "random",
                "tokens": int(np.mean([r[0] for r in runs])),
                "bon": {s: float(np.mean([r[1][s] for r in runs])) for s in selectors},
                "per_prompt": {s: np.mean([r[2][s] for r in runs], 0).tolist() for s in selectors},
            }
        )

    for cps, frac in head_settings:
        with_random(
            lambda lens, sc, cps=cps, frac=frac: head_stops(lens, sc, cps, frac),
            tuple(cps),
            {"policy": f"head frac={frac} at {','.join(map(str, cps))}",
             "family": "hsrm head", "frac": frac},
        )  # fmt: skip
    for cps, thr, keep in threshold_settings:
        with_random(
            lambda lens, sc, cps=cps, thr=thr, keep=keep: threshold_stops(lens, sc, cps, thr, keep),
            tuple(cps),
            {"policy": f"head threshold {','.join(f'{x:.3g}' for x in thr)} at "
             f"{','.join(map(str, cps))} min_keep={keep}",
             "family": "hsrm head, threshold", "thresholds": list(thr), "min_keep": keep},
        )  # fmt: skip
    for n_init, eta, window in deepconf_settings:
        tok, bon, pp = run(
            lambda g, rows, n_init=n_init, eta=eta, window=window: deepconf_stops(
                [conf_all[j] for j in rows], n_init, eta, window
            )
        )
        points.append(
            {
                "policy": f"deepconf online eta={eta} n_init={n_init} window={window}",
                "family": "deepconf",
                "tokens": tok,
                "bon": bon,
                "per_prompt": pp,
                "eta": eta,
                "warmup": n_init,
                "window": window,
            }
        )
    keys = list(groups)
    for warm, tau in consensus_settings:
        cut: set = set()

        def cs(g, rows, warm=warm, tau=tau, cut=cut):
            st = consensus_stops([ext_all[j] for j in rows], lens_all[rows], warm, tau)
            if len(rows) > warm and not st[warm:].any():
                cut.add(g)
            return st

        tok, bon, pp = run(cs)
        name = f"consensus warmup={warm} tau={tau:g}"
        points.append({"policy": name, "family": "consensus", "tokens": tok, "bon": bon,
                       "per_prompt": pp, "warmup": warm, "tau": tau,
                       "prompts_stopped": len(cut)})  # fmt: skip

        def draw_prompts(cut=cut, warm=warm):
            """As many prompts as consensus stopped, chosen at random, stopped after the warm-up."""
            pick = {keys[i] for i in rng.choice(len(keys), size=len(cut), replace=False)}

            def rs(g, rows):
                st = lens_all[rows].copy()
                if g in pick:
                    st[warm:] = 0
                return st

            return rs

        random_point(name, draw_prompts)
    for name, stops_of in (policies or {}).items():
        tok, bon, pp = run(lambda g, rows, f=stops_of: f(rows))
        points.append({"policy": name, "family": "custom", "tokens": tok, "bon": bon,
                       "per_prompt": pp})  # fmt: skip
    for p in points:
        p["saved"] = 1 - int(p["tokens"]) / full_tok if full_tok else 0.0
    return {
        "n_prompts": len(groups),
        "n": int(min(len(r) for r in groups.values())),
        "full_tokens": full_tok,
        "selectors": list(selectors),
        "checkpoints": list(CHECKPOINTS),
        "points": points,
    }
