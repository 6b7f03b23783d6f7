"""A hidden-state reward for RL trainers: ``trl.GRPOTrainer(reward_funcs=[HiddenStateReward(...)])``.

TRL's reward functions see text only; ``HiddenStateReward`` runs a frozen scoring model (usually a
copy of the initial policy) over prompt + completion, reads the layers a trained head needs, and
returns the head's score per completion. Options: RLEV value scaling (reward = s(x)·score with
s(x) = 1 + min(α·v(x), 1), α = 10 as in the RLEV paper), group-relative advantages for other
frameworks, and an OpenRLHF ``reward_func(queries, prompts, labels)`` adapter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from hsrm.capture import teacher_force
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads.base import Head
from hsrm.lm import eos_ids as _eos_ids
from hsrm.models import LoadedModel

log = logging.getLogger(__name__)

TRANSFORMS = ("none", "sigmoid")
MODES = ("copy", "adapters_off")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") or bool(
        getattr(model, "_hf_peft_config_loaded", False)
    )


@contextmanager
def base_states(model: Any) -> Iterator[None]:
    """Run ``model`` as its base model: PEFT adapters disabled and eval mode (no dropout), restored
    after. Works on a ``peft.PeftModel`` (``disable_adapter()``) and on a transformers model with
    PEFT adapters loaded (``disable_adapters()`` / ``enable_adapters()``)."""
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        elif hasattr(model, "disable_adapters") and getattr(model, "_hf_peft_config_loaded", False):
            model.disable_adapters()
            try:
                yield
            finally:
                model.enable_adapters()
        else:
            raise HsrmError(
                "mode='adapters_off' needs a PEFT model (peft.PeftModel or a transformers model "
                f"with adapters loaded); got {type(model).__name__}. Use mode='copy' with a frozen copy."
            )
    finally:
        model.train(was_training)


def _as_text(x: Any, what: str) -> str:
    """TRL passes strings (standard format) or message lists (conversational format)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list | tuple) and all(isinstance(m, dict) and "content" in m for m in x):
        return "".join(_content(m["content"]) for m in x)
    raise HsrmError(f"{what}: expected a string or a list of chat messages, got {type(x).__name__}")


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content blocks: [{"type": "text", "text": ...}]
        return "".join(b.get("text", "") for b in c if isinstance(b, dict))
    return str(c)


class HiddenStateReward:
    """A TRL-compatible reward function scoring completions from a frozen model's hidden states.

    ``lm``: the scoring model (``hsrm.models.LoadedModel``) on any device, run under
    ``inference_mode`` (pass a separate copy, not the policy being trained: the head must score the
    states it was fit on); the head must have been fit on features of this model. ``head``: a fitted ``hsrm`` head (or a saved head's
    folder). Called as TRL calls reward functions::

        reward(prompts=[...], completions=[...], completion_ids=[[...], ...], **dataset_columns)

    and returns one float per completion (``None`` for an empty completion unless ``empty_reward``
    is set; TRL treats ``None`` as "no opinion").

    * ``tokens``: ``"text"`` re-tokenises the completion text after the rendered prompt (works for
      any policy); ``"ids"`` uses TRL's ``completion_ids`` as they are, exact when the scoring model
      shares the policy's tokenizer (the on-policy case). Trailing EOS / pad ids are dropped, as
      in ``hsrm.capture.sample_prompt``.
    * ``transform``: ``"none"`` (the head's raw score) or ``"sigmoid"`` (a probability of correct
      for heads trained with BCE, e.g. ELHSR; the natural scale for RLEV).
    * ``value_column``: a dataset column holding v(x); then reward = s(x)·score with
      s(x) = 1 + min(alpha·v(x), 1) (RLEV, alpha = 10 default).
    * ``chat_template``: render conversational prompts with the scoring tokenizer's template.
    * ``mode``: ``"copy"`` (default): ``lm`` is a separate frozen model, e.g. a second copy of the
      initial policy (twice the weights in memory). ``"adapters_off"``: ``lm.model`` is the policy
      itself, a PEFT model whose LoRA adapters are being trained; each call reads the *base*
      model's states through it with the adapters disabled (``PeftModel.disable_adapter()``) and
      in eval mode, so the head sees the states it was fit on at no extra memory. When TRL wraps
      the model itself (``GRPOTrainer(peft_config=...)``), call ``reward.attach(trainer.model)``
      before ``train()``. Costs of both modes: ``benchmarks/results/rl_modes.md``.
    """

    def __init__(
        self,
        lm: LoadedModel,
        head: Head | str,
        *,
        name: str = "hsrm_reward",
        tokens: str = "text",
        transform: str = "none",
        value_column: str | None = None,
        alpha: float = 10.0,
        batch_size: int = 16,
        empty_reward: float | None = None,
        mode: str = "copy",
    ):
        if isinstance(head, str):
            head = Head.load(head)
        if tokens not in ("text", "ids"):
            raise HsrmError(f"tokens must be 'text' or 'ids', got {tokens!r}")
        if transform not in TRANSFORMS:
            raise HsrmError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if alpha < 0:
            raise HsrmError(f"alpha must be >= 0, got {alpha}")
        if mode not in MODES:
            raise HsrmError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode == "adapters_off" and not _is_peft(lm.model):
            raise HsrmError(
                f"mode='adapters_off': {type(lm.model).__name__} is not a PEFT model; wrap the policy "
                "(peft.get_peft_model) or use mode='copy' with a frozen copy"
            )
        self.layers = tuple(head.required_layers())
        head.check_compatible(lm.fingerprint, self.layers)
        self.lm, self.head = lm, head
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.tokens, self.transform = tokens, transform
        self.value_column, self.alpha = value_column, alpha
        self.batch_size, self.empty_reward = batch_size, empty_reward
        tok = lm.tokenizer
        self._drop = set(_eos_ids(lm)) | (
            {tok.pad_token_id} if tok.pad_token_id is not None else set()
        )
        self.n_calls = 0

    def attach(self, model: Any) -> HiddenStateReward:
        """Score through ``model`` (e.g. ``trainer.model`` after TRL wrapped the policy in PEFT);
        for ``mode='adapters_off'``. The tokenizer and fingerprint stay those of ``lm``."""
        if self.mode != "adapters_off":
            raise HsrmError("attach() is for mode='adapters_off' (the reward reads the policy)")
        if not _is_peft(model):
            raise HsrmError(f"attach: {type(model).__name__} is not a PEFT model")
        self.lm = LoadedModel(model, self.lm.tokenizer, self.lm.fingerprint)
        return self

    def __repr__(self) -> str:
        return f"HiddenStateReward({self.head.architecture}, {self.lm.fingerprint.short()}, name={self.__name__!r})"

    # -- prompt / completion rendering ----------------------------------------------------------
    def render_prompt(self, prompt: Any) -> str:
        """The text the scoring model sees before the completion."""
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list | tuple):
            tok = self.lm.tokenizer
            msgs = [{"role": m["role"], "content": _content(m["content"])} for m in prompt]
            if getattr(tok, "chat_template", None):
                return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            return "\n".join(m["content"] for m in msgs) + "\n"
        raise HsrmError(
            f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}"
        )

    def _answer(self, completion: Any, ids: Sequence[int] | None) -> list[int] | str | None:
        if self.tokens == "ids":
            if ids is None:
                raise HsrmError("tokens='ids' needs completion_ids (TRL passes them)")
            out = [int(t) for t in ids]
            while out and out[-1] in self._drop:
                out.pop()
            return out or None
        text = _as_text(completion, "completion")
        return text if text.strip() else None

    # -- scoring -------------------------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[float | None]:
        """Raw (transformed) head scores, one per completion; prompts that repeat (a GRPO group)
        share one batched teacher-forced pass per ``batch_size`` completions."""
        if len(prompts) != len(completions):
            raise HsrmError(f"{len(prompts)} prompts but {len(completions)} completions")
        if completion_ids is not None and len(completion_ids) != len(completions):
            raise HsrmError(
                f"{len(completions)} completions but {len(completion_ids)} completion_ids"
            )
        out: list[float | None] = [self.empty_reward] * len(completions)
        groups: dict[str, list[tuple[int, list[int] | str]]] = {}
        for i, (p, c) in enumerate(zip(prompts, completions)):
            a = self._answer(c, completion_ids[i] if completion_ids is not None else None)
            if a is None:
                continue
            groups.setdefault(self.render_prompt(p), []).append((i, a))
        for ptext, items in groups.items():
            ctx = base_states(self.lm.model) if self.mode == "adapters_off" else nullcontext()
            with ctx:
                answers = teacher_force(
                    self.lm, ptext, [a for _, a in items], self.layers, batch_size=self.batch_size
                )
            feats = TokenFeatures.from_tensors(
                [a.hidden for a in answers if a.hidden is not None],
                self.layers,
                self.lm.fingerprint,
                [a.logprobs for a in answers],
            )
            s = self.head.score(feats)
            if self.transform == "sigmoid":
                s = 1.0 / (1.0 + np.exp(-s))
            for (i, _), v in zip(items, s):
                out[i] = float(v)
        return out

    def scale(self, values: Sequence[Any]) -> np.ndarray:
        """RLEV's s(x) = 1 + min(alpha·v(x), 1) for each value (missing / NaN values give 1)."""
        s = np.ones(len(values))
        for i, v in enumerate(values):
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise HsrmError(f"{self.value_column}[{i}]: expected a number, got {v!r}") from None
            if math.isnan(fv):
                continue
            if fv < 0:
                raise HsrmError(f"{self.value_column}[{i}]: values must be >= 0, got {fv}")
            s[i] = 1.0 + min(self.alpha * fv, 1.0)
        return s

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        rewards = self.score(prompts, completions, completion_ids)
        if self.value_column is not None:
            if self.value_column not in kwargs:
                raise HsrmError(
                    f"value_column {self.value_column!r} is not among the dataset columns "
                    f"({sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))})"
                )
            s = self.scale(kwargs[self.value_column])
            rewards = [None if r is None else float(r * si) for r, si in zip(rewards, s)]
        self.n_calls += 1
        return rewards


def group_relative_advantages(
    rewards: Sequence[float] | np.ndarray | torch.Tensor,
    group_ids: Sequence[Any] | np.ndarray,
    eps: float = 1e-4,
    scale: bool = True,
) -> np.ndarray:
    """GRPO advantages: (r - mean_g) / (std_g + eps) within each group g (the completions of one
    prompt); ``std`` is the unbiased one, as in TRL; ``scale=False`` gives r - mean_g (Dr. GRPO).
    A group of one completion gets advantage 0. NaN rewards are ignored and get advantage 0."""
    r = (
        rewards.detach().cpu().numpy()
        if isinstance(rewards, torch.Tensor)
        else np.asarray(rewards, float)
    )
    r = r.astype(float)
    g = np.asarray(group_ids)
    if r.ndim != 1 or len(r) != len(g):
        raise HsrmError(f"group_relative_advantages: {r.shape} rewards but {len(g)} group ids")
    adv = np.zeros_like(r)
    for key in dict.fromkeys(g.tolist()):
        idx = np.flatnonzero(g == key)
        v = r[idx]
        ok = ~np.isnan(v)
        if ok.sum() < 2:
            continue
        mu = v[ok].mean()
        a = v - mu
        if scale:
            a = a / (v[ok].std(ddof=1) + eps)
        adv[idx] = np.where(ok, a, 0.0)
    return adv


def openrlhf_reward_func(reward: HiddenStateReward):
    """An OpenRLHF-style ``reward_func(queries, prompts, labels)`` (``--remote_rm_url file.py``):
    ``queries`` are prompt + response texts, ``prompts`` the prompts; returns
    ``{"rewards", "scores", "extra_logs"}`` as OpenRLHF expects (``scores`` = sigmoid of rewards,
    in [0, 1], for its dynamic filtering). Labels are accepted and ignored."""

    def reward_func(
        queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None
    ):
        if len(queries) != len(prompts):
            raise HsrmError(f"{len(queries)} queries but {len(prompts)} prompts")
        responses = []
        for i, (q, p) in enumerate(zip(queries, prompts)):
            if not q.startswith(p):
                raise HsrmError(f"queries[{i}] does not start with prompts[{i}]")
            responses.append(q[len(p) :])
        r = reward(prompts=list(prompts), completions=responses)
        t = torch.tensor([float("nan") if x is None else x for x in r], dtype=torch.float32)
        t = torch.nan_to_num(t, nan=0.0)
        return {"rewards": t, "scores": torch.sigmoid(t), "extra_logs": {reward.__name__: t}}

    reward_func.__name__ = "reward_func"
    return reward_func


__all__ = ["HiddenStateReward", "group_relative_advantages", "openrlhf_reward_func"]
