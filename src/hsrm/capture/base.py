"""What capture produces and how a token is drawn: the layer spec, ``SampleConfig``, ``Answer`` /
``PromptResult``, the per-token statistics, the per-prompt random streams and inverse-CDF draw, and
the ``SampleView`` a prune hook reads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hsrm.errors import HsrmError
from hsrm.layer_spec import parse_layers  # noqa: F401  (re-exported: capture's layer spec)
from hsrm.projection import Projection
from hsrm.tasks.base import Prompt


@dataclass
class SampleConfig:
    """How answers are sampled. Defaults: the settings that make SmolLM2-135M answer the synthetic task."""

    n: int = 16  # samples per prompt
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 6
    seed: int = 0
    layers: str = "all"  # which hidden states to capture; see parse_layers
    top_logprobs: int = 0  # also keep the k most likely tokens' log-probs per step (API-style)
    top_k: int = 0  # keep only the k most likely tokens (0 = off)
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)
    stop: tuple[str, ...] = ()  # stop strings: an answer ends at the token that completes one
    check_every: int = 0  # host syncs ("all finished?") every k steps; 0 = 1 on cpu, 8 on gpus
    # Compact capture: project each layer's states to k dims on the device, inside the loop, so
    # only (T, L, k) float32 per row crosses to the host (at 8B, 33 x 4096 -> 33 x 64); answers'
    # ``hidden`` is then (T, L, k) and PromptResult.projected names the projection.
    project: Projection | None = None

    def validate(self) -> None:
        if self.top_k < 0:
            raise HsrmError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise HsrmError(f"min_p must be in [0, 1], got {self.min_p}")
        if any(not s for s in self.stop):
            raise HsrmError("stop: stop strings must be non-empty")
        if self.check_every < 0:
            raise HsrmError(f"check_every must be >= 0, got {self.check_every}")
        if self.n < 1:
            raise HsrmError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise HsrmError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise HsrmError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise HsrmError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Answer:
    """One answer with its captured signals. ``hidden`` is (tokens, layers, d)."""

    token_ids: list[int]
    text: str
    # (T, L, d), or (T, L, k) when projected during capture; float32 on CPU; None: no capture
    hidden: torch.Tensor | None
    logprobs: torch.Tensor  # (T,) log p(token) under the untempered model
    entropy: torch.Tensor  # (T,) entropy of the untempered next-token distribution
    extra: dict = field(default_factory=dict)
    # (T,) self-certainty: KL(uniform || p) of the next-token distribution (arXiv 2502.18581)
    self_certainty: torch.Tensor | None = None
    # (T,) DeepConf token confidence: minus the mean log-prob of the top-k candidates (2508.15260)
    confidence: torch.Tensor | None = None


@dataclass
class PromptResult:
    prompt: Prompt
    answers: list[Answer]
    prompt_hidden: torch.Tensor | None  # (L, d): states of the prompt's last token
    projected: str = ""  # Projection.tag() when the states were projected during capture


#: DeepConf's token confidence averages the log-probs of the k most likely tokens; k = 20 is the
#: number of top log-probs OpenAI-style APIs return, the setting DeepConf's online runs use.
CONFIDENCE_TOP_K = 20


def token_stats(logp: torch.Tensor, k: int = CONFIDENCE_TOP_K) -> dict[str, torch.Tensor]:
    """Per-position statistics of next-token distributions, computed where the logits already are.

    logp: (..., V) log-probabilities of the untempered model. Returns tensors of shape (...):
    ``entropy``; ``self_certainty`` = KL(U || p) = -log V - mean_v log p_v (Kang et al. 2025,
    arXiv 2502.18581); ``confidence`` = -mean of the top-k log-probs (DeepConf, arXiv 2508.15260).
    """
    V = logp.shape[-1]
    finite = logp.clamp_min(torch.finfo(logp.dtype).min)  # -inf (masked vocab) would poison a mean
    return {
        # exp(-inf) = 0 multiplies the clamped value instead of -inf: the same sum as replacing
        # -inf by 0, without another vocabulary-sized pass
        "entropy": -(logp.exp() * finite).sum(-1),
        "self_certainty": -finite.mean(-1) - float(torch.log(torch.tensor(float(V)))),
        "confidence": -logp.topk(min(k, V), dim=-1).values.mean(-1),
    }


def _prompt_generator(seed: int, prompt_id: str, device: torch.device) -> torch.Generator:
    # Seeded per prompt, not per run position, so a resumed run draws the same samples.
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")
    g = torch.Generator(device=device)
    g.manual_seed(h & ((1 << 63) - 1))
    return g


def _filter_probs(probs: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """top-k, then top-p (nucleus), then min-p, in the order Hugging Face applies them."""
    if cfg.top_k and cfg.top_k < probs.shape[-1]:
        kth = probs.topk(cfg.top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < cfg.top_p * sp.sum(-1, keepdim=True)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp * keep)
    if cfg.min_p > 0:
        probs = probs.masked_fill(probs < cfg.min_p * probs.amax(-1, keepdim=True), 0.0)
    return probs


def _draw(logits: torch.Tensor, cfg: SampleConfig, u: torch.Tensor) -> torch.Tensor:
    """Tokens (R,) from logits (R, V) by inverse-CDF sampling with the rows' uniforms u (R,)."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = _filter_probs(torch.softmax(logits / cfg.temperature, dim=-1), cfg)
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).clamp_max(cdf[:, -1] * (1 - 1e-6))
    return torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)


@dataclass
class SampleView:
    """What a ``prune`` hook sees after decode step ``step`` (0-based). Rows are ``b * n + j``
    (prompt b of the call, sample j); tensors live on the model's device.

    ``tokens``, ``logprobs``, ``confidence``, ``entropy``: (step + 1, rows) per-step values (rows
    that had already stopped hold padding there); ``states``: (step + 1, rows, L, d) captured
    states so far, or None without capture (or when the states exceed ``CAPTURE_BUFFER_BYTES`` and
    go to the host in chunks); ``alive``: (rows,) bool, rows still decoding;
    ``lengths``: (rows,) answer tokens so far; ``prompt_ids``: the call's prompts, in row order
    (a hook that draws at random seeds per prompt with them, so its choices do not depend on
    which prompts share the batch, the engine, or a resume)."""

    step: int
    tokens: torch.Tensor
    logprobs: torch.Tensor
    confidence: torch.Tensor
    entropy: torch.Tensor
    states: torch.Tensor | None
    alive: torch.Tensor
    lengths: torch.Tensor
    prompt_ids: tuple[str, ...] = ()


#: ``prune(step, view) -> (rows,) bool mask of rows to stop now, or None``. A stopped row keeps the
#: tokens sampled up to and including ``step`` (no EOS), with their states; its answer's
#: ``extra["stop"]`` is ``"pruned"``. Early-pruning policies (e.g. DeepConf's confidence cut-off)
#: build on this. Calling it every step syncs with the device once per step.
PruneHook = Callable[[int, SampleView], "torch.Tensor | None"]
