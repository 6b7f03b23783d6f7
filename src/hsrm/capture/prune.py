"""Early pruning: policies that stop samples while ``sample_prompts`` decodes them.

``prune_hook(...)`` builds the per-step ``prune(step, view)`` hook the sampler calls (see
``PruneHook``); ``hsrm sample --prune POLICY`` and ``SampleRunConfig.prune`` use it. A
stopped row keeps its tokens so far and is stored with ``"stop": "pruned"``; best-of-N is then
taken over the samples that finished. Policies (the offline versions are in ``hsrm.bon.prune``):

- ``head``: at each checkpoint t (answer tokens generated), a ``PrefixHead`` scores every running
  sample from its hidden states averaged over its first t tokens, and the lowest ``frac`` of each
  prompt's running samples stop (at least one sample of a prompt is always kept).
- ``random``: the same number of samples stopped at the same checkpoints, chosen at random (the
  control at the same budget).
- ``deepconf``: DeepConf's online stopping (arXiv 2508.15260, Alg. 2). The first ``warmup``
  samples of each prompt are never stopped; the threshold is the (100 - eta)th percentile of their
  lowest sliding-window group confidence, and any other sample stops as soon as its current window
  confidence falls below it. The paper runs the warm-up traces first; here all samples of a prompt
  decode together, so the warm-up traces' lowest confidence *so far* is used at every step. Their
  lowest-so-far only falls as they decode, so the threshold is at most as strict as the paper's at
  the end and stricter early on.

- ``consensus``: DeepConf's adaptive sampling (arXiv 2508.15260, Alg. 2: stop drawing traces for
  a question once the vote of those drawn reaches consensus tau). Not a per-step hook but waves:
  the first ``warmup`` samples of every prompt are drawn and run to the end; a prompt whose most
  common extracted answer holds >= ``tau`` of them gets no more samples (each is stored empty,
  ``"stop": "pruned"`` at token 0); the others draw the rest. Each sample keeps its own random
  stream (``capture.sample_prompts(streams=...)``), so every sample drawn equals the unpruned
  run's. The paper's tau is 0.95 on models right most of the time; on the CoT family (a 135M
  model right 16-28% of the time) the setting chosen on a training store was warmup 4, tau 0.5
  (docs/quality.md). Each wave decodes as many rows at once as ``batch_prompts`` x n; the first
  finds enough prompts in the sampler's refill window, which defaults to batch_prompts x
  ceil(n / warmup) prompts for this policy (``sampling.refill_window``).

``PrefixHead``: one standardised logistic regression per checkpoint on prefix-averaged states
(the pooled probe of ``hsrm.bon.quality``, C = 0.01), fitted on a fully sampled store of the same
task with ``hsrm.bon.prefix_head.fit_prefix_head`` (``hsrm prune-head``) and saved as safetensors +
JSON.

The offline replay of these policies over a fully sampled store (``hsrm.bon.prune``) stops samples
with the same rules: ``stop_lowest`` (head / random), ``deepconf_threshold`` and ``has_consensus``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.capture.base import Answer, parse_layers
from hsrm.capture.decode import sample_prompts
from hsrm.errors import HsrmError
from hsrm.io import atomic_write_json, read_json

POLICIES = ("none", "head", "deepconf", "random", "consensus")
PREFIX_HEAD_FILES = ("prefix_head.safetensors", "prefix_head.json")


@dataclass
class PrefixHead:
    """Per checkpoint t: ``(mean, std, coef, intercept)`` over the flattened (layers x d) average of
    a sample's first t answer-token states; ``layers`` are model layer indices."""

    checkpoints: list[int]
    layers: list[int]
    mean: np.ndarray  # (K, L*d)
    std: np.ndarray  # (K, L*d)
    coef: np.ndarray  # (K, L*d)
    intercept: np.ndarray  # (K,)
    fingerprint: dict[str, Any]
    #: per checkpoint, from ``prefix_diagnostics`` when it was fitted with them (else None)
    diagnostics: list[dict[str, float | None]] | None = None

    def score(self, t: int, pooled: torch.Tensor) -> torch.Tensor:
        """(rows,) scores at checkpoint ``t`` of (rows, L, d) prefix-averaged states."""
        k = self.checkpoints.index(t)
        x = pooled.reshape(len(pooled), -1).float().cpu().numpy()
        z = (x - self.mean[k]) / self.std[k]
        return torch.as_tensor(z @ self.coef[k] + self.intercept[k])

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        arrs = {
            k: np.ascontiguousarray(getattr(self, k), np.float32)
            for k in ("mean", "std", "coef", "intercept")
        }
        tmp = p / (PREFIX_HEAD_FILES[0] + ".tmp")
        save_file(arrs, str(tmp))
        tmp.replace(p / PREFIX_HEAD_FILES[0])
        atomic_write_json(
            p / PREFIX_HEAD_FILES[1],
            {
                "checkpoints": self.checkpoints,
                "layers": self.layers,
                "fingerprint": self.fingerprint,
                **({"diagnostics": self.diagnostics} if self.diagnostics is not None else {}),
            },
        )

    @staticmethod
    def load(path: str | Path) -> PrefixHead:
        from safetensors.numpy import load_file

        p = Path(path)
        if not (p / PREFIX_HEAD_FILES[0]).exists() or not (p / PREFIX_HEAD_FILES[1]).exists():
            raise HsrmError(
                f"{p}: not a prefix head folder (needs {' and '.join(PREFIX_HEAD_FILES)}; "
                "make one with `hsrm prune-head --store RUN --out DIR`)"
            )
        meta = read_json(p / PREFIX_HEAD_FILES[1], "prefix head")
        a = load_file(str(p / PREFIX_HEAD_FILES[0]))
        return PrefixHead(
            [int(t) for t in meta["checkpoints"]],
            [int(x) for x in meta["layers"]],
            a["mean"],
            a["std"],
            a["coef"],
            a["intercept"],
            meta.get("fingerprint", {}),
            meta.get("diagnostics"),
        )


def stop_lowest(scores: np.ndarray, live: np.ndarray, kept: int, frac: float) -> np.ndarray:
    """One prompt at one checkpoint: the rows of ``live`` (indices of its samples still running)
    that stop, the lowest-scoring ``floor(frac * len(live))`` of them by ``scores`` (indexed by
    row), but never so many that fewer than one of the ``kept`` (not yet pruned) samples is left."""
    m = min(int(np.floor(frac * len(live))), int(kept) - 1)
    if m <= 0:
        return live[:0]
    return live[np.argsort(scores[live], kind="stable")[:m]]


def deepconf_threshold(warm_lowest: np.ndarray, eta: float) -> float:
    """DeepConf's stopping threshold: the (100 - eta)th percentile of the warm-up samples' lowest
    group confidences (eta = 90: DeepConf-high, 10: DeepConf-low)."""
    return float(np.percentile(warm_lowest, 100 - eta))


def has_consensus(answers: Sequence[object], tau: float) -> bool:
    """Whether the most common extracted answer (None = no answer, never counted) holds >= ``tau``
    of ``answers``: DeepConf's consensus test, with an unweighted vote."""
    counts: dict[object, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return bool(answers) and max(counts.values(), default=0) >= tau * len(answers)


def parse_checkpoints(spec: str | Sequence[int]) -> list[int]:
    if isinstance(spec, str):
        try:
            cps = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise HsrmError(
                f"prune_checkpoints: {spec!r} is not a comma list of token counts"
            ) from None
    else:
        cps = [int(x) for x in spec]
    if not cps or any(c < 1 for c in cps) or cps != sorted(set(cps)):
        raise HsrmError(f"prune_checkpoints: {spec!r} must be increasing token counts >= 1")
    return cps


def prune_hook(
    policy: str,
    n: int,
    *,
    head: PrefixHead | None = None,
    captured_layers: Sequence[int] = (),
    checkpoints: str | Sequence[int] = "12",
    frac: float = 0.75,
    eta: float = 90.0,
    warmup: int = 4,
    window: int = 8,
    seed: int = 0,
    tau: float = 0.5,
    extract: Callable[[str, Any], Any] | None = None,
):
    """The ``prune(step, view)`` hook of ``policy`` for calls that draw ``n`` samples per prompt,
    or None for ``none``; for ``consensus`` a ``ConsensusStop`` (``extract(text, prompt)``: the
    task's answer extraction). ``captured_layers``: the layers the sampler captures (``head``
    reads its own subset of them)."""
    if policy not in POLICIES:
        raise HsrmError(f"prune: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    if policy == "none":
        return None
    if policy == "consensus":
        if not 0 < warmup < n:
            raise HsrmError(f"prune_warmup: {warmup} must be in [1, n={n})")
        if not 0 < tau <= 1:
            raise HsrmError(f"prune_tau: {tau} must be in (0, 1]")
        if extract is None:
            raise HsrmError("prune: policy 'consensus' needs the task's answer extraction")
        return ConsensusStop(n, warmup, tau, extract)
    if not 0 < frac < 1:
        raise HsrmError(f"prune_frac: {frac} must be in (0, 1)")
    cps = parse_checkpoints(checkpoints)
    if policy == "head":
        if head is None:
            raise HsrmError("prune: policy 'head' needs a prefix head (prune_head: FOLDER)")
        missing = [c for c in cps if c not in head.checkpoints]
        if missing:
            raise HsrmError(
                f"prune_checkpoints: the prefix head was fitted at {head.checkpoints}, not {missing}"
            )
        lost = [x for x in head.layers if x not in captured_layers]
        if lost:
            raise HsrmError(f"prune: the prefix head reads layers {lost}, which are not captured")
        pos = [list(captured_layers).index(x) for x in head.layers]
        return _RankPrune(n, cps, frac, seed, head, pos)
    if policy == "random":
        return _RankPrune(n, cps, frac, seed, None, [])
    if not 0 < eta < 100:
        raise HsrmError(f"prune_eta: {eta} must be in (0, 100)")
    if not 0 < warmup < n:
        raise HsrmError(f"prune_warmup: {warmup} must be in [1, n={n})")
    if window < 1:
        raise HsrmError(f"prune_window: {window} must be >= 1")
    return _DeepConfPrune(n, eta, warmup, window)


class _RankPrune:
    """``head`` (scores from ``head``) or ``random`` (head None) pruning at checkpoints."""

    def __init__(self, n, cps, frac, seed, head, pos):
        self.n, self.cps, self.frac, self.head, self.pos = n, cps, frac, head, pos
        self.seed = seed

    def __call__(self, step: int, view) -> torch.Tensor | None:
        if step == 0:
            self.pruned = torch.zeros_like(view.alive, device="cpu")
            # random: one stream per prompt, seeded by (seed, prompt id), so a prompt's draws do
            # not depend on its batch, the engine (local or Ray) or a resume
            ids = view.prompt_ids or tuple(str(b) for b in range(len(view.alive) // self.n))
            self.rngs = [
                np.random.default_rng([self.seed, zlib.crc32(str(i).encode())]) for i in ids
            ]
        t = step + 1
        if t not in self.cps:
            return None
        alive = view.alive.cpu()
        R = len(alive)
        if self.head is not None:
            if view.states is None:
                raise HsrmError("prune: policy 'head' needs the sampler to capture hidden states")
            pooled = view.states[:t, :, self.pos].float().mean(0)  # (R, L, d)
            s = self.head.score(t, pooled).numpy()
        else:
            s = np.concatenate([g.random(self.n) for g in self.rngs])  # (R,)
        stop = torch.zeros(R, dtype=torch.bool)
        for b in range(R // self.n):
            rows = np.arange(b * self.n, (b + 1) * self.n)
            live = rows[alive[rows].numpy()]
            kept = int((~self.pruned[rows]).sum())  # running or finished, not pruned
            stop[stop_lowest(s, live, kept, self.frac)] = True
        self.pruned |= stop
        return stop


class _DeepConfPrune:
    def __init__(self, n, eta, warmup, window):
        self.n, self.eta, self.warmup, self.w = n, eta, warmup, window

    def __call__(self, step: int, view) -> torch.Tensor | None:
        conf = view.confidence  # (step + 1, R): token confidence, higher = surer
        R = conf.shape[1]
        if step == 0:
            self.lowest = torch.full((R,), float("inf"))
        if step + 1 < self.w:
            return None
        lengths = view.lengths.cpu()
        real = lengths >= step + 1  # token `step` is an answer token (not EOS / padding)
        g = conf[step + 1 - self.w : step + 1].float().mean(0).cpu()  # (R,) current window
        self.lowest = torch.where(real, torch.minimum(self.lowest, g), self.lowest)
        alive = view.alive.cpu()
        stop = torch.zeros(R, dtype=torch.bool)
        for b in range(R // self.n):
            warm = self.lowest[b * self.n : b * self.n + self.warmup]
            warm = warm[torch.isfinite(warm)]
            if len(warm) == 0:
                continue
            thr = deepconf_threshold(warm.numpy(), self.eta)
            rows = torch.arange(b * self.n + self.warmup, (b + 1) * self.n)
            cut = rows[alive[rows] & real[rows] & (g[rows] < thr)]
            stop[cut] = True
        return stop


class ConsensusStop:
    """``consensus`` pruning: samples drawn in two waves (see the module docstring)."""

    def __init__(self, n: int, warmup: int, tau: float, extract: Callable[[str, Any], Any]):
        self.n, self.warmup, self.tau, self.extract = n, warmup, tau, extract

    def sample(
        self, lm, prompts: Sequence[Any], scfg, layers: tuple[int, ...], batch_prompts: int = 0
    ) -> list:
        """``capture.sample_prompts`` of ``prompts`` (``scfg.n`` = ``n`` samples each) in waves."""
        n, w = self.n, self.warmup
        # rows per decode batch as without waves (batch_prompts x n): a wave of fewer samples per
        # prompt decodes more prompts at once (with refill, from the window it was given)
        b1, b2 = (
            (batch_prompts * n // w, max(1, batch_prompts * n // (n - w)))
            if batch_prompts
            else (0, 0)
        )
        first = sample_prompts(
            lm, prompts, replace(scfg, n=w), layers, batch_prompts=b1, streams=(0, n)
        )
        open_ = [
            b
            for b, r in enumerate(first)
            if not has_consensus([self.extract(a.text, r.prompt) for a in r.answers], self.tau)
        ]
        rest = sample_prompts(
            lm, [prompts[b] for b in open_], replace(scfg, n=n - w), layers,
            batch_prompts=b2, streams=(w, n),
        )  # fmt: skip
        more = dict(zip(open_, rest))
        for b, r in enumerate(first):
            r.answers += (
                more[b].answers if b in more else [_unstarted(r.answers[0]) for _ in range(n - w)]
            )
        return first


def _unstarted(like):
    """An answer never started (consensus stopping): no tokens, stored as pruned at token 0."""

    def empty(x):
        return None if x is None else x[:0].clone()

    extra = {"eos_logprob": None, "stop": "pruned"}
    extra.update({k: empty(like.extra[k]) for k in ("top_logprobs", "top_ids") if k in like.extra})
    return Answer(
        token_ids=[], text="", hidden=empty(like.hidden), logprobs=empty(like.logprobs),
        entropy=empty(like.entropy), self_certainty=empty(like.self_certainty),
        confidence=empty(like.confidence), extra=extra,
    )  # fmt: skip


def check_prune_config(cfg) -> PrefixHead | None:
    """Check ``cfg``'s ``prune*`` fields (a ``SampleRunConfig``) before anything is sampled or
    written; returns the loaded prefix head for ``prune=head``."""
    if cfg.prune not in POLICIES:
        raise HsrmError(f"prune: unknown policy {cfg.prune!r}; use one of {', '.join(POLICIES)}")
    if cfg.prune == "none":
        return None
    head = None
    if cfg.prune == "head":
        if not cfg.prune_head:
            raise HsrmError("prune_head: policy 'head' needs a prefix head folder (--prune-head)")
        head = PrefixHead.load(cfg.prune_head)
        n_layers = int(head.fingerprint.get("n_layers", max(head.layers)))
        captured = parse_layers(cfg.layers, n_layers)
        lost = [x for x in head.layers if x not in captured]
        if lost:
            raise HsrmError(
                f"prune_head: {cfg.prune_head} reads layers {lost}, which layers={cfg.layers!r} "
                "does not capture"
            )
    elif cfg.prune_head:
        raise HsrmError(f"prune_head: only used with prune=head, not prune={cfg.prune}")
    # every value check the hook does, without a model (captured layers are checked later)
    _hook(cfg, head, head.layers if head is not None else (), lambda text, prompt: None)
    return head


def _hook(cfg, head: PrefixHead | None, captured_layers: Sequence[int], extract=None):
    return prune_hook(
        cfg.prune,
        cfg.n,
        head=head,
        captured_layers=captured_layers,
        checkpoints=cfg.prune_checkpoints,
        frac=cfg.prune_frac,
        eta=cfg.prune_eta,
        warmup=cfg.prune_warmup,
        window=cfg.prune_window,
        seed=cfg.prune_seed,
        tau=cfg.prune_tau,
        extract=extract,
    )


def hook_from_config(cfg, captured_layers: Sequence[int], task: Any):
    """The sampler's ``prune`` hook for ``cfg`` (a ``SampleRunConfig``; None for ``prune=none``).
    ``consensus`` votes with ``task``'s answer extraction."""
    extract = task.extract if cfg.prune == "consensus" else None
    return _hook(cfg, check_prune_config(cfg), captured_layers, extract)


def prune_settings(cfg) -> dict[str, Any]:
    """The ``prune*`` fields that change what is sampled (kept in the store's meta)."""
    keys = {
        "head": ("prune_head", "prune_checkpoints", "prune_frac"),
        "random": ("prune_checkpoints", "prune_frac", "prune_seed"),
        "deepconf": ("prune_eta", "prune_warmup", "prune_window"),
        "consensus": ("prune_warmup", "prune_tau"),
    }[cfg.prune]
    return {"policy": cfg.prune, **{k[6:]: getattr(cfg, k) for k in keys}}
