"""The serving core: score completions with a saved head (``hsrm score``, the server, Ray workers).

``Scorer(lm, head)`` teacher-forces prompt + completion through the model (``hsrm.capture.
teacher_force``), reads the layers the head needs and returns the head's score per completion.
It also scores answers that ``sample_prompts`` drew (their states were captured while sampling),
so the server ranks samples and answers ``/v1/score`` with one object: the two agree up to float
rounding, because capture puts answer token t's state exactly where teacher forcing puts it.

Prompts are plain text (used verbatim, as OpenAI's completions API and OpenRLHF send them) or chat
messages (rendered with the tokenizer's chat template, assistant turn opened, exactly as the
server renders a chat request). A completion's trailing end-of-sequence / pad tokens are dropped,
as sampling does not count the terminating EOS as an answer token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrm.capture import Answer, teacher_force
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head
from hsrm.lm import encode as _encode
from hsrm.lm import eos_ids as _eos_ids
from hsrm.lm import prompt_text
from hsrm.models import LoadedModel, ModelFingerprint
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)

PromptLike = str | Sequence[Mapping[str, Any]]


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(b.get("text", "") for b in c if isinstance(b, dict))
    raise HsrmError(f"message content must be a string or a list of parts, got {type(c).__name__}")


def as_messages(messages: Any, where: str = "messages") -> tuple[dict[str, str], ...]:
    """Validate chat messages (``[{"role": ..., "content": ...}, ...]``) into a tuple of dicts."""
    if not isinstance(messages, list | tuple) or not messages:
        raise HsrmError(f"{where}: expected a non-empty list of chat messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise HsrmError(f"{where}[{i}]: expected an object with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise HsrmError(f"{where}[{i}].role: expected a string")
        out.append({"role": m["role"], "content": _content(m["content"])})
    return tuple(out)


def check_head_matches(lm: LoadedModel, head: Head, head_path: str | Path | None = None) -> None:
    """Refuse a head fit on another model (naming both fingerprints) or on pseudo-layers (logit
    features) that sampling cannot capture."""
    check_head_fingerprint(lm.fingerprint, head, head_path)


def check_head_fingerprint(
    fp: ModelFingerprint, head: Head, head_path: str | Path | None = None
) -> None:
    """``check_head_matches`` against a model's fingerprint alone (the Ray driver's check, before
    any worker loads the weights)."""
    head._check_fitted()
    where = f"head {head_path}" if head_path else "the head"
    if not head.fingerprint_.compatible(fp):
        raise HsrmError(
            f"{where} was fit on {head.fingerprint_.short()} but the model is "
            f"{fp.short()}; fit a head on this model's features"
        )
    layers = head.required_layers()
    top = fp.n_layers + 1  # prenorm pseudo-layer included
    bad = [lay for lay in layers if not 0 <= lay <= top]
    if bad:
        raise HsrmError(
            f"{where} reads feature layers {bad} (logit features), which serving and scoring "
            "do not build; use a hidden-state head"
        )


class Scorer:
    """Scores completions with a fitted head from the frozen model's hidden states.

    ``head``: a fitted head or a saved head's folder. ``batch_size``: completions per
    teacher-forced forward pass.
    """

    def __init__(self, lm: LoadedModel, head: Head | str | Path, batch_size: int = 16):
        path = None
        if isinstance(head, str | Path):
            path, head = head, Head.load(head)
        check_head_matches(lm, head, path)
        self.lm, self.head, self.batch_size = lm, head, batch_size
        self.layers = tuple(head.required_layers())
        tok = lm.tokenizer
        self._drop = set(_eos_ids(lm)) | (
            {int(tok.pad_token_id)} if tok.pad_token_id is not None else set()
        )

    def render_prompt(self, prompt: PromptLike) -> str:
        """Plain text verbatim; messages through the chat template (assistant turn opened)."""
        if isinstance(prompt, str):
            return prompt
        msgs = as_messages(prompt, "prompt")
        return prompt_text(self.lm.tokenizer, Prompt(id="score", messages=msgs, answer=""))

    def completion_ids(self, completion: str | Sequence[int]) -> list[int]:
        """Token ids of a completion, trailing EOS / pad dropped (sampling never keeps them)."""
        ids = (
            _encode(self.lm.tokenizer, completion)
            if isinstance(completion, str)
            else [int(t) for t in completion]
        )
        while ids and ids[-1] in self._drop:
            ids.pop()
        return ids

    def score_answers(self, answers: Sequence[Answer]) -> np.ndarray:
        """Head scores of answers whose states are already captured (sampled or teacher-forced)."""
        if not answers:
            return np.zeros(0)
        hs, lps = [], []
        for a in answers:
            if a.hidden is None or a.hidden.shape[1] != len(self.layers):
                raise HsrmError(
                    f"an answer's states hold {0 if a.hidden is None else a.hidden.shape[1]} "
                    f"layers; the head reads {list(self.layers)} (capture exactly those)"
                )
            hs.append(a.hidden)  # (T, L, d)
            lps.append(a.logprobs)
        X = TokenFeatures.from_tensors(hs, self.layers, self.lm.fingerprint, lps)
        return self.head.score(X)

    def score_completions(
        self, prompt: PromptLike, completions: Sequence[str | Sequence[int]]
    ) -> list[float]:
        """One score per completion of one prompt (text or messages); teacher forcing."""
        return self.score_pairs([prompt] * len(completions), completions)

    def score_pairs(
        self, prompts: Sequence[PromptLike], completions: Sequence[str | Sequence[int]]
    ) -> list[float]:
        """One score per (prompt, completion); completions of one prompt share forward passes."""
        if len(prompts) != len(completions):
            raise HsrmError(f"{len(prompts)} prompts but {len(completions)} completions")
        out = [0.0] * len(completions)
        groups: dict[str, list[tuple[int, list[int]]]] = {}
        for i, (p, c) in enumerate(zip(prompts, completions)):
            groups.setdefault(self.render_prompt(p), []).append((i, self.completion_ids(c)))
        L, d = len(self.layers), self.lm.fingerprint.hidden_size
        for ptext, items in groups.items():
            nonempty = [(i, ids) for i, ids in items if ids]
            got = (
                teacher_force(
                    self.lm, ptext, [ids for _, ids in nonempty], self.layers, self.batch_size
                )
                if nonempty
                else []
            )
            by_index = {i: a for (i, _), a in zip(nonempty, got)}
            answers = [
                by_index.get(i)
                or Answer(  # an empty completion: no tokens, as a sample that stopped at once
                    token_ids=[],
                    text="",
                    hidden=torch.zeros(0, L, d),
                    logprobs=torch.zeros(0),
                    entropy=torch.zeros(0),
                )
                for i, _ in items
            ]
            for (i, _), s in zip(items, self.score_answers(answers)):
                out[i] = float(s)
        return out


def store_scores_path(store: str | Path, head: str | Path) -> Path:
    """Where a store's scores go by default: ``STORE/scores-<head folder name>.jsonl``."""
    return Path(store) / f"scores-{Path(head).resolve().name}.jsonl"


def write_store_scores(records: Sequence[Mapping[str, Any]], scores: Any, out: str | Path) -> None:
    """One JSON line per store record, in store order: ``prompt_id``, ``sample``, ``score``."""
    from hsrm.io import atomic_write_text

    lines = [
        json.dumps({"prompt_id": r["prompt_id"], "sample": r["sample"], "score": float(s)}) + "\n"
        for r, s in zip(records, scores)
    ]
    atomic_write_text(out, "".join(lines))
