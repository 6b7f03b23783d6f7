"""Pairwise evaluation of preference reward models on a held-out split, with bootstrap CIs over questions.

``encode_pairs`` teacher-forces every distinct answer of a set of pairs once (answers shared by
several pairs are encoded once), keeping per-token states of chosen layers and log-probs; a
``PairSet`` is saved to / loaded from one safetensors file + a JSON sidecar, so that every arm of a
benchmark trains from the same cache. ``evaluate_arms`` fits each arm on the train pairs and
reports pairwise accuracy on the test pairs with a bootstrap CI that resamples whole questions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.models import ModelFingerprint
from hsrm.prefs.data import PrefPair, pair_prompt_text

log = logging.getLogger(__name__)


@dataclass
class PairSet:
    """Distinct answers with their features, and pairs as (chosen, rejected) answer indices."""

    feats: TokenFeatures  # item i: (T_i, L, d) of answer i
    texts: list[str]  # answer texts
    prompts: list[str]  # the prompt of each answer
    answer_groups: np.ndarray  # (n_answers,) question id of each answer
    chosen: np.ndarray  # (n_pairs,) answer index
    rejected: np.ndarray  # (n_pairs,)
    pair_ids: list[str]
    pair_groups: np.ndarray  # (n_pairs,) question id of each pair
    # question tokens' states (template prefix dropped), per question: SAE training text for free
    prompt_hidden: list[torch.Tensor] | None = None  # each (P_i, L, d)
    prompt_groups: list[str] | None = None

    def token_states(
        self, layer: int, answers: Sequence[int] | None = None, prompts: bool = True
    ) -> torch.Tensor:
        """(N, d) token states at hidden-state index ``layer`` of ``answers`` (default all) and,
        with ``prompts``, of the questions those answers belong to."""
        if layer not in self.feats.layers:
            raise HsrmError(f"layer {layer} not cached; have {list(self.feats.layers)}")
        j = self.feats.layers.index(layer)
        idx = range(len(self.texts)) if answers is None else answers
        parts = [self.feats[int(i)][:, j] for i in idx]
        if prompts and self.prompt_hidden is not None:
            if self.prompt_groups is None:
                raise HsrmError("PairSet: prompt_hidden is set but prompt_groups is not")
            want = {str(self.answer_groups[int(i)]) for i in idx}
            parts += [
                h[:, j].float() for h, g in zip(self.prompt_hidden, self.prompt_groups) if g in want
            ]
        return torch.cat(parts)

    def __len__(self) -> int:
        return len(self.chosen)

    def mean_logprob(self) -> np.ndarray:
        """(n_answers,) length-normalised log-prob of each answer under the model."""
        return np.array([float(self.feats.logprobs(i).mean()) for i in range(len(self.texts))])

    def subset_pairs(self, idx: Sequence[int] | np.ndarray) -> PairSet:
        """Keep pairs ``idx`` and only the answers they use (answer indices renumbered)."""
        idx = np.asarray(idx, dtype=int)
        used = np.unique(np.concatenate([self.chosen[idx], self.rejected[idx]]))
        remap = {int(a): j for j, a in enumerate(used)}
        return PairSet(
            self.feats.subset(used),
            [self.texts[a] for a in used],
            [self.prompts[a] for a in used],
            self.answer_groups[used],
            np.array([remap[int(a)] for a in self.chosen[idx]], dtype=int),
            np.array([remap[int(a)] for a in self.rejected[idx]], dtype=int),
            [self.pair_ids[i] for i in idx],
            self.pair_groups[idx],
            self.prompt_hidden,
            self.prompt_groups,
        )

    def head_inputs(self) -> tuple[TokenFeatures, np.ndarray, np.ndarray]:
        """(X, y, groups) for ``Head.fit``.

        When each question's pairs are exactly all (chosen, rejected) combinations of its answers
        and no answer is both (TruthfulQA pairs), every answer appears once, grouped by question:
        a head's pairs within a group are then exactly these pairs, and its validation split holds
        out whole questions. Otherwise each pair's chosen (y=1) and rejected (y=0) answer, grouped
        by pair id (an answer used by several pairs appears once per pair)."""
        roles: dict[int, set[int]] = {}
        for c, r in zip(self.chosen, self.rejected):
            roles.setdefault(int(c), set()).add(1)
            roles.setdefault(int(r), set()).add(0)
        if all(len(v) == 1 for v in roles.values()):
            by_q: dict[str, set[tuple[int, int]]] = {}
            for c, r, g in zip(self.chosen, self.rejected, self.pair_groups):
                by_q.setdefault(str(g), set()).add((int(c), int(r)))
            full = all(
                len(s) == len({c for c, _ in s}) * len({r for _, r in s}) for s in by_q.values()
            )
            if full:
                used = np.array(sorted(roles))
                y = np.array([1 if 1 in roles[int(a)] else 0 for a in used])
                return self.feats.subset(used), y, self.answer_groups[used].astype(str)
        order = np.stack([self.chosen, self.rejected], 1).reshape(-1)
        y = np.tile([1, 0], len(self.chosen))
        groups = np.repeat(np.asarray(self.pair_ids, dtype=object), 2)
        return self.feats.subset(order), y, groups

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file (states as float16, concatenated over answers) + ``.json`` sidecar."""
        from safetensors.torch import save

        from hsrm.io import atomic_write_bytes, atomic_write_json

        path = Path(path)
        hs = [self.feats[i] for i in range(len(self.texts))]
        lens = torch.tensor([h.shape[0] for h in hs], dtype=torch.long)
        lps = [self.feats.logprobs(i) for i in range(len(self.texts))]
        tensors = {
            "hidden": torch.cat(hs).half().contiguous(),  # (sum T, L, d)
            "logprobs": torch.cat(lps).float().contiguous(),
            "lengths": lens,
        }
        if self.prompt_hidden:
            tensors["prompt_hidden"] = torch.cat(self.prompt_hidden).half().contiguous()
            tensors["prompt_lengths"] = torch.tensor(
                [h.shape[0] for h in self.prompt_hidden], dtype=torch.long
            )
        atomic_write_bytes(path, save(tensors))
        atomic_write_json(
            path.with_suffix(".json"),
            {
                "fingerprint": self.feats.fingerprint.to_dict(),
                "layers": list(self.feats.layers),
                "texts": self.texts,
                "prompts": self.prompts,
                "answer_groups": [str(g) for g in self.answer_groups],
                "chosen": self.chosen.tolist(),
                "rejected": self.rejected.tolist(),
                "pair_ids": self.pair_ids,
                "pair_groups": [str(g) for g in self.pair_groups],
                "prompt_groups": self.prompt_groups,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> PairSet:
        from safetensors.torch import load_file

        path = Path(path)
        side = path.with_suffix(".json")
        if not path.exists() or not side.exists():
            raise HsrmError(f"{path}: no pair cache here (needs {path.name} and {side.name})")
        meta = json.loads(side.read_text())
        t = load_file(str(path))
        offs = np.concatenate([[0], np.cumsum(t["lengths"].numpy())])
        hidden, lp = t["hidden"], t["logprobs"]
        hs = [hidden[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        lps = [lp[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        feats = TokenFeatures.from_tensors(
            hs, meta["layers"], ModelFingerprint.from_dict(meta["fingerprint"]), lps
        )
        ph = None
        if "prompt_hidden" in t:
            po = np.concatenate([[0], np.cumsum(t["prompt_lengths"].numpy())])
            ph = [t["prompt_hidden"][po[i] : po[i + 1]] for i in range(len(po) - 1)]
        return cls(
            feats,
            meta["texts"],
            meta["prompts"],
            np.asarray(meta["answer_groups"], dtype=object),
            np.asarray(meta["chosen"], dtype=int),
            np.asarray(meta["rejected"], dtype=int),
            meta["pair_ids"],
            np.asarray(meta["pair_groups"], dtype=object),
            ph,
            meta.get("prompt_groups"),
        )


def template_prefix_len(tokenizer, system: str | None = None) -> int:
    """Tokens of the chat template before a pair's question (system prompt, role markers): the
    same for every question, so they are dropped from the question states kept for SAEs."""
    a, b = (
        tokenizer(pair_prompt_text(tokenizer, q, system), add_special_tokens=False)["input_ids"]
        for q in ("A", "B")
    )
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 0)


def _encode_question(
    lm, ptext: str, skip: int, answers: Sequence[str], layers: tuple[int, ...]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """Teacher-force ``answers`` after the chat prompt ``ptext`` with ``hsrm.capture.teacher_force``.
    Returns per answer (hidden (T, L, d) float32, logprobs (T,)) and the question tokens' states
    (Q, L, d) without the template's first ``skip`` tokens (None when they cannot be split off).

    One batched call serves both: the template prefix is the prompt and the question tokens are
    prepended to every answer, so each answer token sees exactly the full prompt before it."""
    from hsrm.capture import teacher_force

    tok = lm.tokenizer
    p_ids = tok(ptext, add_special_tokens=False)["input_ids"]
    a_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    if any(not a for a in a_ids):
        raise HsrmError("teacher_force: an answer has no tokens (empty answer)")
    prefix = tok.decode(p_ids[:skip]) if skip > 0 else ""
    if not prefix or tok(prefix, add_special_tokens=False)["input_ids"] != p_ids[:skip]:
        got = teacher_force(lm, ptext, a_ids, layers)  # no clean prefix: answers only
        return [(a.hidden, a.logprobs) for a in got], None  # type: ignore[misc]
    q = p_ids[skip:]
    got = teacher_force(lm, prefix, [q + a for a in a_ids], layers)
    res = [(g.hidden[len(q) :], g.logprobs[len(q) :]) for g in got]  # type: ignore[index]
    return res, got[0].hidden[: len(q)]  # type: ignore[index]


def encode_pairs(
    lm,
    pairs: Sequence[PrefPair],
    layers: str | Sequence[int] = "mid",
    system: str | None = None,
    cache: str | Path | None = None,
) -> PairSet:
    """Teacher-force every distinct (prompt, answer) of ``pairs`` once; ``layers`` as in
    ``parse_layers``. ``system``: a system message (None = the chat template's default; SmolLM2's
    default adds ~20 tokens per prompt). With ``cache``, load it if present, else write it."""
    from tqdm.auto import tqdm

    from hsrm.layer_spec import parse_layers

    if cache is not None and Path(cache).exists():
        ps = PairSet.load(cache)
        if not ps.feats.fingerprint.compatible(lm.fingerprint):
            raise HsrmError(
                f"{cache}: cached features come from {ps.feats.fingerprint.short()}, not {lm.fingerprint.short()}"
            )
        if pairs and [p.id for p in pairs] != ps.pair_ids:
            raise HsrmError(
                f"{cache} holds other pairs than those given; delete it or pass another cache path"
            )
        log.info("loaded %d pairs from %s", len(ps), cache)
        return ps
    if not pairs:
        raise HsrmError("encode_pairs: no pairs")
    lay = parse_layers(layers if isinstance(layers, str) else list(layers), lm.fingerprint.n_layers)
    by_prompt: dict[str, list[str]] = {}
    for p in pairs:
        lst = by_prompt.setdefault(p.prompt, [])
        for a in (p.chosen, p.rejected):
            if a not in lst:
                lst.append(a)
    index: dict[tuple[str, str], int] = {}
    hs: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    texts: list[str] = []
    prompts: list[str] = []
    agroups: list[str] = []
    group_of = {p.prompt: p.group for p in pairs}
    tok = lm.tokenizer
    skip = template_prefix_len(tok, system)
    p_states: list[torch.Tensor] = []
    p_groups: list[str] = []
    for prompt, answers in tqdm(by_prompt.items(), desc="teacher-force pairs", leave=False):
        res, q_states = _encode_question(
            lm, pair_prompt_text(tok, prompt, system), skip, answers, lay
        )
        if q_states is not None:
            p_states.append(q_states.half())
            p_groups.append(group_of[prompt])
        for a, (h, lp) in zip(answers, res):
            index[(prompt, a)] = len(texts)
            hs.append(h.half())
            lps.append(lp)
            texts.append(a)
            prompts.append(prompt)
            agroups.append(group_of[prompt])
    feats = TokenFeatures.from_tensors(hs, lay, lm.fingerprint, lps)
    ps = PairSet(
        feats,
        texts,
        prompts,
        np.asarray(agroups, dtype=object),
        np.array([index[(p.prompt, p.chosen)] for p in pairs], dtype=int),
        np.array([index[(p.prompt, p.rejected)] for p in pairs], dtype=int),
        [p.id for p in pairs],
        np.asarray([p.group for p in pairs], dtype=object),
        p_states or None,
        p_groups or None,
    )
    if cache is not None:
        ps.save(cache)
    return ps


# -- evaluation ---------------------------------------------------------------------------------
def pairwise_result(
    answer_scores: np.ndarray, ps: PairSet, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Pairwise accuracy (ties half) of per-answer scores on ``ps``, with a 95 % bootstrap CI that
    resamples questions (all pairs of a question together)."""
    from hsrm.metrics import bootstrap_metric_ci, pairwise_accuracy

    s = np.asarray(answer_scores, float)
    if len(s) != len(ps.texts):
        raise HsrmError(f"pairwise_result: {len(s)} scores for {len(ps.texts)} answers")
    c, r = s[ps.chosen], s[ps.rejected]
    acc = pairwise_accuracy(c, r)
    lo, hi = bootstrap_metric_ci(
        lambda idx: pairwise_accuracy(c[idx], r[idx]), ps.pair_groups, n_boot=n_boot, seed=seed
    )
    return {
        "acc": acc,
        "lo": lo,
        "hi": hi,
        "n_pairs": len(c),
        "n_questions": len(np.unique(ps.pair_groups)),
    }


def score_answers(head, ps: PairSet) -> np.ndarray:
    return head.score(ps.feats)


def fit_head_on_pairs(head, ps: PairSet):
    X, y, g = ps.head_inputs()
    return head.fit(X, y, g)


Arm = Callable[[PairSet, PairSet], np.ndarray]


def head_arm(name: str, **params: Any) -> Arm:
    """An arm that fits ``make_head(name, **params)`` on the train pairs and scores test answers."""
    from hsrm.heads import make_head

    def run(train: PairSet, test: PairSet) -> np.ndarray:
        return score_answers(fit_head_on_pairs(make_head(name, **params), train), test)

    return run


def logprob_arm(train: PairSet, test: PairSet) -> np.ndarray:
    """The answer's length-normalised log-prob under the model (no training)."""
    return test.mean_logprob()


def text_only_arm(train: PairSet, test: PairSet) -> np.ndarray:
    """Control: TF-IDF logistic regression on the answer text alone (no prompt, no hidden state)."""
    from hsrm.baselines.controls import TextOnlyScorer

    texts = [train.texts[a] for a in np.concatenate([train.chosen, train.rejected])]
    y = np.concatenate([np.ones(len(train)), np.zeros(len(train))])
    return TextOnlyScorer().fit(texts, y).score(test.texts)


def paired_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, ps: PairSet, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Pairwise accuracy of A minus that of B on the same pairs, with a bootstrap CI resampling
    questions (both arms see the same resample, so the CI is much tighter than two separate ones)."""
    from hsrm.metrics import bootstrap_metric_ci

    def win(s: np.ndarray) -> np.ndarray:
        c, r = np.asarray(s, float)[ps.chosen], np.asarray(s, float)[ps.rejected]
        return (c > r) + 0.5 * (c == r)

    d = win(scores_a) - win(scores_b)  # (n_pairs,)
    lo, hi = bootstrap_metric_ci(
        lambda idx: float(d[idx].mean()), ps.pair_groups, n_boot=n_boot, seed=seed
    )
    return {"diff": float(d.mean()), "lo": lo, "hi": hi}


def evaluate_arms(
    train: PairSet,
    test: PairSet,
    arms: dict[str, Arm],
    n_boot: int = 1000,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Fit every arm on ``train`` and measure pairwise accuracy on ``test`` (CI over questions).
    Refuses a train / test split that shares a question. ``scores``, if given, receives each arm's
    test answer scores (for ``paired_difference``)."""
    shared = set(map(str, train.pair_groups)) & set(map(str, test.pair_groups))
    if shared:
        raise HsrmError(
            f"train and test share {len(shared)} question(s), e.g. {sorted(shared)[:3]}; split by question"
        )
    import time

    out = {}
    for name, arm in arms.items():
        t0 = time.time()
        sc = arm(train, test)
        if scores is not None:
            scores[name] = sc
        res = pairwise_result(sc, test, n_boot=n_boot, seed=seed)
        res["seconds"] = round(time.time() - t0, 2)
        log.info("%-28s acc %.3f [%.3f, %.3f]", name, res["acc"], res["lo"], res["hi"])
        out[name] = res
    return out
