"""Fitting the prefix head that ``hsrm sample --prune head`` stops samples with (``hsrm prune-head``).

The head itself, and the online policies that use it, are ``hsrm.capture.prune``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hsrm.capture.prune import PrefixHead, parse_checkpoints
from hsrm.config import field
from hsrm.errors import HsrmError


def fit_prefix_head(
    store,
    idx: np.ndarray | None = None,
    checkpoints: Sequence[int] = (4, 8),
    C: float = 0.01,
    labels: np.ndarray | None = None,
) -> PrefixHead:
    """A ``PrefixHead`` over every captured layer of ``store``, trained at each checkpoint t on
    the samples at least t tokens long (the ones still running there) with their final label, or
    with ``labels`` (one 0/1 per record of ``store``; e.g. "a final head ranks this sample in the
    top half of its prompt", so that pruning stops what that head would not pick anyway)."""
    from hsrm.bon.quality import pooled_states

    idx = np.arange(len(store)) if idx is None else np.asarray(idx)
    lens = np.array([store.records[i]["n_tokens"] for i in idx])
    if labels is not None and len(labels) != len(store):
        raise HsrmError(f"fit_prefix_head: {len(labels)} labels for {len(store)} records")
    y = (store.labels if labels is None else np.asarray(labels))[idx]
    mean, std, coef, icpt = [], [], [], []
    for t in checkpoints:
        sel = idx[lens >= t]
        ys = y[lens >= t]
        if len(np.unique(ys)) < 2:
            raise HsrmError(
                f"{store.path}: samples at least {t} tokens long are all right or all wrong; "
                "cannot fit a prefix head at that checkpoint"
            )
        X = pooled_states(store, sel, prefix=t).reshape(len(sel), -1)  # (n, L*d)
        mu, sd, w, b = _fit_checkpoint(X, ys, C)
        mean.append(mu)
        std.append(sd)
        coef.append(w)
        icpt.append(b)
    fp = store.fingerprint
    return PrefixHead(
        [int(t) for t in checkpoints],
        [int(x) for x in store.layers],
        np.stack(mean),
        np.stack(std),
        np.stack(coef),
        np.array(icpt),
        {"name": fp.name, "n_layers": fp.n_layers, "hidden_size": fp.hidden_size},
    )


def _fit_checkpoint(X: np.ndarray, y: np.ndarray, C: float):
    """One checkpoint's standardised logistic regression: (mean, std, coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=200, tol=1e-3).fit((X - mu) / sd, y)
    return mu, sd, clf.coef_[0], float(clf.intercept_[0])


def prefix_diagnostics(
    store, checkpoints: Sequence[int], C: float = 0.01, folds: int = 3, seed: int = 0
) -> list[dict[str, float | None]]:
    """Is pruning at these checkpoints worth it? Per checkpoint t, over the samples at least t
    tokens long (the ones a pruner could stop there):

    - ``tied`` and ``auroc_ceiling`` (``hsrm.bon.prune.prefix_ties``): the share of a prompt's
      (right, wrong) pairs whose first t tokens are still identical, and the within-prompt AUROC
      that leaves to any prefix reader;
    - ``auroc``: the prefix head's own within-prompt AUROC, out of fold over ``folds`` prompt
      splits, fitted as ``fit_prefix_head`` fits it.

    A value is None where no prompt has both right and wrong samples.

    On the CoT family, synthetic prefix scores needed about 0.57-0.62 at token 12 for share
    pruning to keep BoN@16 within 0.01, and real heads at 0.56-0.66 kept it for some selectors
    only (``research/quality/results/quality_prune_needed*.md``, ``quality_prune_fresh.md``)."""
    from hsrm import metrics as M
    from hsrm.bon.prune import prefix_ties
    from hsrm.bon.quality import pooled_states
    from hsrm.splits import prompt_folds

    y, g = store.labels, store.prompt_ids
    ids = [store.token_ids(i) for i in range(len(store))]
    lens = np.array([len(x) for x in ids])
    out = []
    for t in checkpoints:
        sel = np.flatnonzero(lens >= t)
        ys, gs = y[sel], g[sel]
        ties = prefix_ties([ids[i] for i in sel], ys, gs, t)
        X = pooled_states(store, sel, prefix=t).reshape(len(sel), -1)  # (n, L*d)
        fold = prompt_folds(gs, folds, seed)
        s = np.full(len(sel), np.nan)
        for f in range(folds):
            a, b = fold != f, fold == f
            if len(np.unique(ys[a])) < 2 or not b.any():
                continue
            mu, sd, w, c = _fit_checkpoint(X[a], ys[a], C)
            s[b] = (X[b] - mu) / sd @ w + c
        ok = ~np.isnan(s)
        auc = M.within_prompt_auroc(s[ok], ys[ok], gs[ok]) if ok.any() else float("nan")
        row = {"checkpoint": int(t), **ties, "auroc": float(auc)}
        # None, not NaN, where no prompt has both classes: prefix_head.json stays strict JSON
        out.append({k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()})
    return out


@dataclass
class PrefixHeadConfig:
    """``hsrm prune-head``: fit the prefix head that ``hsrm sample --prune head`` reads."""

    store: str = field("", "fully sampled store of the task (hsrm sample, hidden states kept)")
    out: str = field("", "output folder (prefix_head.safetensors + prefix_head.json)")
    # token 12: where the CoT family's right and wrong answers have mostly diverged (docs/quality.md)
    checkpoints: str = field("12", "answer-token counts at which the head scores samples")
    C: float = field(0.01, "inverse L2 strength of each checkpoint's logistic regression", min=1e-9)
    diagnose: bool = field(
        True,
        "also report, per checkpoint, the head's out-of-fold within-prompt AUROC and the ceiling "
        "left by answers still identical there (3 more fits; saved in prefix_head.json)",
    )
    overwrite: bool = field(
        False, "write into a non-empty folder hsrm did not make (only hsrm's own files replaced)"
    )


def train_prefix_head(cfg: PrefixHeadConfig) -> PrefixHead:
    """Fit ``fit_prefix_head`` on ``cfg.store`` at ``cfg.checkpoints`` and save it to ``cfg.out``
    (checked before anything is fitted or written)."""
    from hsrm.store import Store

    if not cfg.store:
        raise HsrmError("store: name the sample store the head is fitted on (--store RUN)")
    if not cfg.out:
        raise HsrmError("out: name the output folder (--out DIR)")
    from hsrm.io import atomic_dir, check_out

    cps = parse_checkpoints(cfg.checkpoints)
    # a folder hsrm did not make (or the store itself) is refused before minutes of fitting
    check_out(cfg.out, "prefix_head", overwrite=cfg.overwrite, inputs=[cfg.store])
    st = Store(cfg.store)
    if st.meta.get("pool", "none") != "none" or not st.layers:
        raise HsrmError(f"{cfg.store}: the store keeps no per-token hidden states to fit on")
    head = fit_prefix_head(st, checkpoints=cps, C=cfg.C)
    if cfg.diagnose:
        head.diagnostics = prefix_diagnostics(st, cps, C=cfg.C)
    with atomic_dir(cfg.out, "prefix_head", overwrite=cfg.overwrite, inputs=[cfg.store]) as tmp:
        head.save(tmp)
    return head
