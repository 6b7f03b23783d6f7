"""Sampling with capture, and teacher-forced capture.

``sample_prompts`` decodes B prompts x N samples as one batch (prompts left-padded, one prefill per
prompt whose KV cache the N samples share, per-row positions and attention masks) and records for
every answer token the hidden states of the chosen layers and its log-probability *during* sampling
(no second forward pass). The state of answer token t is the one computed when t is fed back as
input, exactly where a teacher-forced pass over prompt + answer would put it; the last token needs
one extra decoder step, run without the LM head.

``teacher_force`` computes the same features for given answers (references, preference pairs, RL
completions), evaluating the LM head only on the positions that predict answer tokens.

Hidden-state index 0 is the embedding output and index ``n_layers`` the last block's output after
the final norm (the Hugging Face convention SWIFT uses). The LM itself is run through ``hsrm.lm``.

Reproducibility: each prompt draws all its random numbers up front from its own generator (seeded
by run seed and prompt id), one uniform per (step, sample); tokens are drawn by inverse-CDF
sampling with those uniforms. A prompt's samples therefore do not depend on which prompts share its
batch, on the batch size, or on rows that finished or were pruned around it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hsrm import lm as lmx
from hsrm.errors import HsrmError
from hsrm.layer_spec import parse_layers
from hsrm.lm import PrenormTap, prenorm_index, prompt_text  # noqa: F401  (re-exported)
from hsrm.models import LoadedModel
from hsrm.projection import Projection
from hsrm.tasks.base import Prompt

# Private names other modules imported before ``hsrm.lm`` existed.
_PrenormTap = PrenormTap
_encode = lmx.encode
_eos_ids = lmx.eos_ids
_lm_parts = lmx.lm_parts
_cache_kw = lmx.cache_kw
_logits = lmx.head_logits


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

_RUNNING, _EOS, _PRUNED, _STOP = 0, 1, 2, 3
#: Largest on-device capture buffer; beyond it states are flushed to the host in chunks.
CAPTURE_BUFFER_BYTES = 8 << 30
_STOP_NAMES = {_RUNNING: "length", _EOS: "eos", _PRUNED: "pruned", _STOP: "stop"}


@dataclass
class _StepBuffers:
    """The per-token records both decode loops fill: (T, R) tokens, log-probs and the training-free
    statistics, top-K log-probs (T, R, K), and per-row answer length and stop reason (R,)."""

    tok: torch.Tensor
    lp: torch.Tensor
    ent: torch.Tensor
    cert: torch.Tensor
    conf: torch.Tensor
    topv: torch.Tensor | None
    topi: torch.Tensor | None
    lengths: torch.Tensor
    reason: torch.Tensor

    @classmethod
    def alloc(cls, T: int, R: int, K: int, padv: int, dev: torch.device) -> _StepBuffers:
        """Preallocated on the device: (T, R[, K]) per step and row, (R,) per row."""
        f32: dict[str, Any] = {"dtype": torch.float32, "device": dev}
        return cls(
            tok=torch.full((T, R), padv, dtype=torch.long, device=dev),
            lp=torch.zeros(T, R, **f32),
            ent=torch.zeros(T, R, **f32),
            cert=torch.zeros(T, R, **f32),
            conf=torch.zeros(T, R, **f32),
            topv=torch.zeros(T, R, K, **f32) if K else None,
            topi=torch.zeros(T, R, K, dtype=torch.long, device=dev) if K else None,
            lengths=torch.zeros(R, dtype=torch.long, device=dev),
            reason=torch.zeros(R, dtype=torch.int8, device=dev),
        )

    def parts(self) -> tuple[Any, ...]:
        return (
            self.tok, self.lp, self.ent, self.cert, self.conf,
            self.topv, self.topi, self.lengths, self.reason,
        )  # fmt: skip

    def record(
        self,
        logits: torch.Tensor,  # (rows, V)
        cfg: SampleConfig,
        u: torch.Tensor,  # (rows,) each row's uniform for this step, from its prompt's stream
        rows: torch.Tensor,  # (rows,) original row indices
        rstep: Any,  # the step (int) or each row's step (rows,)
        alive: torch.Tensor,  # (rows,) bool
        padv: int,
        eos_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the rows' next tokens and record them and their statistics; returns (tokens, alive
        after EOS). The terminating EOS is not an answer token: its log-prob is kept apart, and its
        state is never needed, so a row that stops costs no extra step."""
        logp = torch.log_softmax(logits, dim=-1)
        nxt = _draw(logits, cfg, u)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, padv))
        self.tok[rstep, rows] = nxt
        self.lp[rstep, rows] = logp.gather(-1, nxt[:, None]).squeeze(-1)
        st_ = token_stats(logp)
        self.ent[rstep, rows] = st_["entropy"]
        self.cert[rstep, rows] = st_["self_certainty"]
        self.conf[rstep, rows] = st_["confidence"]
        if self.topv is not None and self.topi is not None:
            tv, ti = logp.topk(self.topv.shape[-1], dim=-1)
            self.topv[rstep, rows] = tv
            self.topi[rstep, rows] = ti
        ended = alive & torch.isin(nxt, eos_t)
        self.lengths[rows] += (alive & ~ended).long()
        self.reason[rows] = torch.where(ended, _EOS, self.reason[rows]).to(torch.int8)
        return nxt, alive & ~ended


def _batch_inputs(
    lm: Any, prompts: Sequence[Any], cfg: SampleConfig, streams: tuple[int, int] | None = None
) -> tuple[list[list[int]], torch.Tensor, int, torch.Tensor]:
    """What both decode loops start from: each prompt's token ids (refused if empty), the EOS ids
    and pad id, and U (T, R): row b*N+j's uniform at each step, drawn from prompt b's own
    generator, so a prompt's samples never depend on its batch neighbours. ``streams`` = (first,
    total): the N rows are samples first .. first+N-1 of a ``total``-sample draw (columns of the
    same (T, total) uniforms), so samples drawn in waves equal those drawn at once."""
    dev = lm.device
    seqs = [lmx.prompt_ids(lm.tokenizer, p) for p in prompts]
    for p, sq in zip(prompts, seqs):
        if not sq:
            raise HsrmError(f"prompt {p.id!r} has no tokens")
    eos_t = torch.tensor(lmx.eos_ids(lm), device=dev)
    T, N = cfg.max_new_tokens, cfg.n
    first, total = streams or (0, N)
    if not 0 <= first <= total - N:
        raise HsrmError(f"streams: samples {first}..{first + N - 1} are not within {total}")
    U = torch.stack(
        [
            torch.rand(T, total, generator=_prompt_generator(cfg.seed, p.id, dev), device=dev)[
                :, first : first + N
            ]
            for p in prompts
        ],
        1,
    ).reshape(T, len(prompts) * N)
    return seqs, eos_t, lmx.pad_id(lm), U


#: Prompts of one batch whose first tokens agree for at least this many tokens (fixed few-shot
#: exemplars, a system prompt) prefill those tokens once per group and copy the keys and values to
#: the group's rows (prefix caching, as vLLM does it across requests, here within a batch). On the
#: demo task that prefill was 72% of the FLOPs per sample. 0 = off.
SHARED_PREFIX_MIN = 16


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_groups(seqs: Sequence[Sequence[int]], min_len: int) -> tuple[list[int], list[int]]:
    """Group prompts that share a prefix: (group of each prompt, each group's prefix length).

    In sorted order prompts with a shared prefix are neighbours; the groups are the contiguous runs
    that save the most prefill tokens ((members - 1) x shared prefix, by dynamic programming over
    the sorted prompts, so prompts that share only a system prompt do not pull two few-shot
    families into one group sharing just that). A group's prefix is what all its members share,
    at least ``min_len`` tokens, and leaves every member at least one token of its own (the
    prompt's last state and logits come from that forward); a prompt alone keeps all but its last
    token as its "prefix"."""
    order = sorted(range(len(seqs)), key=lambda i: list(seqs[i]))
    n = len(order)
    own = [len(seqs[i]) - 1 for i in order]
    adj = [_lcp(seqs[order[k]], seqs[order[k + 1]]) for k in range(n - 1)]  # neighbours' LCP
    # best[j]: most tokens saved by grouping the first j sorted prompts; cut[j]: where j's group starts
    best, cut = [0] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], j - 1  # prompt j-1 alone
        p = own[j - 1]
        for i in range(j - 2, -1, -1):  # the group order[i:j]
            p = min(p, own[i], adj[i])
            if p < min_len:
                break
            if best[i] + (j - 1 - i) * p > best[j]:
                best[j], cut[j] = best[i] + (j - 1 - i) * p, i
    group: list[int] = [0] * n
    plen: list[int] = []
    j = n
    while j > 0:  # the runs, last first
        i = cut[j]
        p = min(own[i:j] + adj[i : j - 1])
        for k in range(i, j):
            group[order[k]] = -1 - len(plen)  # numbered from the end for now
        plen.append(p)
        j = i
    plen.reverse()
    group = [len(plen) + g for g in group]
    return group, plen


def _prefill(
    lm: LoadedModel, seqs: list[list[int]], padv: int, cap_layers: Sequence[int], T: int
) -> tuple[lmx.ForwardOut, torch.Tensor, Any]:
    """Prefill the prompts into a new cache with room for T steps: (output at the prompts' last
    tokens, attention mask (B, cols), cache). Prompts that share a prefix (``prefix_groups``)
    prefill it once: the groups' prefixes first (G rows), their keys and values copied to each
    member's row, then every prompt's own tokens; a row's layout is [pad][prefix][pad][own tokens],
    the pads masked and positions counting real tokens, so it computes what one padded forward
    would (within floating-point tolerance). Without a shared prefix: one left-padded forward."""
    dev = lm.device
    group, plen = prefix_groups(seqs, SHARED_PREFIX_MIN) if SHARED_PREFIX_MIN > 0 else ([], [])
    if not plen or len(plen) == len(seqs):  # nothing shared
        ids, mask, pos = lmx.pad(seqs, padv, "left", dev)
        cache = lmx.new_cache(lm, reserve=T)
        return (
            lmx.forward(lm, ids, mask, layers=cap_layers, position_ids=pos, cache=cache),
            mask,
            cache,
        )
    firsts = {g: i for i, g in reversed(list(enumerate(group)))}
    pre = [seqs[firsts[g]][: plen[g]] for g in range(len(plen))]
    own = [sq[plen[g] :] for sq, g in zip(seqs, group)]
    ids_p, mask_p, pos_p = lmx.pad(pre, padv, "left", dev)  # (G, Pm)
    ids_s, mask_s, pos_s = lmx.pad(own, padv, "left", dev)  # (B, S)
    cache = lmx.new_cache(lm, reserve=T + ids_s.shape[1])
    lmx.forward(lm, ids_p, mask_p, layers=(), position_ids=pos_p, cache=cache)
    g_t = torch.tensor(group, device=dev)
    cache.batch_select_indices(g_t)  # each prompt's row gets its group's prefix
    mask = torch.cat([mask_p[g_t], mask_s], 1)
    pos = pos_s + torch.tensor(plen, device=dev)[g_t][:, None]
    out = lmx.forward(lm, ids_s, mask, layers=cap_layers, position_ids=pos, cache=cache)
    return out, mask, cache


def _span(mask: torch.Tensor) -> int:
    """Columns from the first one any row attends to up to the last: what joining a batch must keep
    (more than the longest row's real tokens when a shared prefix left pads inside rows)."""
    used = mask.any(0).nonzero()
    return mask.shape[1] - int(used[0]) if len(used) else 0


def _projector(
    lm: LoadedModel, cfg: SampleConfig, layers: tuple[int, ...], capture: bool
) -> tuple[torch.Tensor | None, int]:
    """(L, d, k) float32 projection matrices on the device (None: full states) and the width of
    the captured states (k or d)."""
    if not capture or cfg.project is None:
        return None, lm.fingerprint.hidden_size
    P = cfg.project.matrices(layers, lm.fingerprint.hidden_size).to(lm.device)
    return P, cfg.project.k


def _states(out: lmx.ForwardOut, layers: tuple[int, ...], P: torch.Tensor | None) -> torch.Tensor:
    """The last position's states of ``layers``: (rows, L, d) in the model's dtype, or with
    ``P`` (L, d, k) their projection, (rows, L, k) float32 (as ``Projection.apply`` computes it)."""
    s = out.stack(layers, -1)
    return s if P is None else torch.einsum("rld,ldk->rlk", s.float(), P)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """A device tensor on the host: one pinned, non-blocking copy on CUDA (sync once after all)."""
    if x.device.type != "cuda":
        return x.cpu()
    h = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    h.copy_(x, non_blocking=True)
    return h


def _stop_cut(tok: Any, ids: list[int], stops: Sequence[str]) -> int | None:
    """Length of the shortest prefix of ``ids`` whose text contains a stop string, or None."""
    text = tok.decode(ids, skip_special_tokens=True)
    if not any(s in text for s in stops):
        return None
    for t in range(1, len(ids) + 1):
        pre = tok.decode(ids[:t], skip_special_tokens=True)
        if any(s in pre for s in stops):
            return t
    return len(ids)


@torch.inference_mode()
def sample_prompts(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    cfg: SampleConfig,
    layers: tuple[int, ...] | None = None,
    capture: bool = True,
    prune: PruneHook | None = None,
    batch_prompts: int = 0,
    streams: tuple[int, int] | None = None,
) -> list[PromptResult]:
    """Draw ``cfg.n`` answers to each prompt, all ``len(prompts) * cfg.n`` rows decoded together.
    ``streams`` = (first, total): draw samples first .. first + n - 1 of each prompt's ``total``
    (the same tokens as those samples of one call with n = total; waves of samples use it).

    ``batch_prompts`` = B > 0 (and < the number of prompts): at most B prompts decode together,
    and when all of a prompt's rows have finished the next prompt is prefilled and joins the batch
    in its place (refill), so the batch stays full. Same tokens as without (each prompt's own
    stream), states within floating-point tolerance. Refill needs an in-place KV cache and a
    capture buffer for all the prompts' states within ``CAPTURE_BUFFER_BYTES``, and no ``prune``
    hook; otherwise the prompts are sampled B at a time without refill.

    One ``PromptResult`` per prompt, in order. Each prompt draws from its own seeded stream, so
    its answers do not depend on which other prompts share the call (tokens identical; states
    equal within floating-point tolerance, since padding changes the kernels' reduction shapes).
    Captured states go into one preallocated on-device buffer (steps, rows, L, d) and come to the
    host in one copy at the end; "all finished?" is checked every ``cfg.check_every`` steps, and
    finished rows are then dropped from the batch (KV cache included) once a quarter of it has.
    Answer tokens are the generated tokens before the terminating EOS (which is not included).
    ``prune``: optional per-step hook, see ``PruneHook``.
    """
    if not prompts:
        return []
    model, tok = lm.model, lm.tokenizer
    layers = layers if layers is not None else parse_layers(cfg.layers, lm.fingerprint.n_layers)
    if 0 < batch_prompts < len(prompts):
        if prune is None and _refill_fits(lm, len(prompts), cfg, layers, capture):
            return _sample_refill(lm, prompts, cfg, layers, capture, batch_prompts, streams)
        return [
            r
            for c in range(0, len(prompts), batch_prompts)
            for r in sample_prompts(
                lm, prompts[c : c + batch_prompts], cfg, layers, capture, prune, streams=streams
            )
        ]
    cap_layers = layers if capture else ()
    dev = lm.device
    B, N, T = len(prompts), cfg.n, cfg.max_new_tokens
    R = B * N
    seqs, eos_t, padv, U = _batch_inputs(lm, prompts, cfg, streams)
    every = cfg.check_every or (1 if dev.type == "cpu" else 8)

    out, mask, cache = _prefill(lm, seqs, padv, cap_layers, T)
    P, d = _projector(lm, cfg, layers, capture)
    prompt_hidden = _to_host(_states(out, layers, P)) if capture else None  # (B, L, d|k)
    _, head, softcap = lmx.lm_parts(model)
    logits = lmx.head_logits(head, softcap, out.last[:, -1]).repeat_interleave(N, 0)  # (R, V)
    cache.batch_repeat_interleave(N)
    mask = mask.repeat_interleave(N, 0)
    next_pos = mask.sum(-1)  # (R,) position of the next fed token: the prompt's length

    # Per-step outputs for every row, preallocated on the device: (T, R[, ...]).
    K = cfg.top_logprobs
    bufs = _StepBuffers.alloc(T, R, K, padv, dev)
    tok_buf, lp_buf, ent_buf, cert_buf, conf_buf, topv_buf, topi_buf, lengths, reason = bufs.parts()
    L = len(layers)
    st_dtype = out.last.dtype if P is None else torch.float32
    # Captured states: one on-device buffer of C steps. C = T unless that exceeds
    # CAPTURE_BUFFER_BYTES (e.g. 8B shape, 1024 rows x 256 steps x 33 layers = 70 GB); then every C
    # steps the chunk goes to a pinned host buffer in one non-blocking copy, which the stream
    # orders before the chunk is overwritten, so no sync is needed.
    st_buf = st_host = None
    C = T
    if capture:
        row_bytes = R * L * d * st_dtype.itemsize
        C = max(1, min(T, CAPTURE_BUFFER_BYTES // max(1, row_bytes)))
        st_buf = torch.zeros(C, R, L, d, dtype=st_dtype, device=dev)
        if C < T:
            # every step a row reads was written; empty: no host-side zero fill of GBs per batch
            st_host = torch.empty(T, R, L, d, dtype=st_dtype, pin_memory=dev.type == "cuda")
    active = torch.arange(R, device=dev)  # original row index of each row in the batch
    alive = torch.ones(R, dtype=torch.bool, device=dev)  # over the rows in the batch
    steps = 0
    for step in range(T):
        nxt, alive = bufs.record(logits, cfg, U[step, active], active, step, alive, padv, eos_t)
        steps = step + 1
        last = step == T - 1
        if last and not capture:
            break
        if (step + 1) % every == 0 or last:
            feed = alive
            if cfg.stop:
                pre = alive
                alive = _check_stops(tok, cfg.stop, tok_buf, steps, active, alive, lengths, reason)
                # The token that completed a stop string is part of the answer: with capture it is
                # fed once more for its state.
                feed = pre if capture else alive
            n_feed = int(feed.sum())
            if n_feed == 0:
                break
            if n_feed <= 3 * len(active) // 4:  # compact: finished rows stop costing
                keep = feed.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, alive, nxt = active[keep], alive[keep], nxt[keep]
                mask, next_pos = mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
        out = lmx.forward(
            lm, nxt[:, None], mask, layers=cap_layers, position_ids=next_pos[:, None], cache=cache
        )
        next_pos = next_pos + 1
        if st_buf is not None:
            st_buf[step % C].index_copy_(0, active, _states(out, layers, P))
            if st_host is not None and (step % C == C - 1 or last):
                c0 = step - step % C
                st_host[c0 : step + 1].copy_(st_buf[: step + 1 - c0], non_blocking=True)
        if prune is not None:
            full_alive = torch.zeros(R, dtype=torch.bool, device=dev)
            full_alive[active] = alive
            view = SampleView(
                step=step,
                tokens=tok_buf[:steps],
                logprobs=lp_buf[:steps],
                confidence=conf_buf[:steps],
                entropy=ent_buf[:steps],
                states=st_buf[:steps] if st_buf is not None and st_host is None else None,
                alive=full_alive,
                lengths=lengths,
                prompt_ids=tuple(p.id for p in prompts),
            )
            stop = prune(step, view)
            if stop is not None:
                cut = alive & stop.to(dev)[active]
                reason[active] = torch.where(cut, _PRUNED, reason[active]).to(torch.int8)
                alive = alive & ~cut
        if last:
            break
        logits = lmx.head_logits(head, softcap, out.last[:, -1])

    host = [_to_host(x[:steps]) for x in (tok_buf, lp_buf, ent_buf, cert_buf, conf_buf)]
    host += [_to_host(lengths), _to_host(reason)]
    tops = (_to_host(topv_buf[:steps]), _to_host(topi_buf[:steps])) if K else None  # type: ignore[index]
    st_h: torch.Tensor | None
    if st_host is not None:  # flush the chunk the loop left (a break before the chunk's end)
        c0 = (steps - 1) - (steps - 1) % C
        st_host[c0:steps].copy_(st_buf[: steps - c0], non_blocking=True)  # type: ignore[index]
        st_h = st_host[:steps]
    else:
        st_h = _to_host(st_buf[:steps]) if st_buf is not None else None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return _results(lm, prompts, cfg, host, tops, st_h, prompt_hidden, capture, (L, d))


def _results(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    cfg: SampleConfig,
    host: list[torch.Tensor],
    tops: tuple[torch.Tensor, torch.Tensor] | None,
    st_h: torch.Tensor | None,
    prompt_hidden: torch.Tensor | None,
    capture: bool,
    Ld: tuple[int, int],
) -> list[PromptResult]:
    """PromptResults from the host copies of the per-step buffers (T', R[, ...])."""
    tok, N, R = lm.tokenizer, cfg.n, len(prompts) * cfg.n
    L, d = Ld
    tok_m, lp_m, ent_m, cert_m, conf_m, len_h, why_h = host
    lens: list[int] = len_h.tolist()
    why: list[int] = why_h.tolist()
    if cfg.stop:  # the answer is defined by its tokens alone, however often rows were checked
        for i in range(R):
            n_cut = _stop_cut(tok, tok_m[: lens[i], i].tolist(), cfg.stop)
            if n_cut is not None:
                lens[i], why[i] = n_cut, _STOP
    ph = prompt_hidden.float() if prompt_hidden is not None else None
    results = []
    for b, p in enumerate(prompts):
        answers = []
        for j in range(N):
            i = b * N + j
            t = lens[i]
            tid = tok_m[:t, i].tolist()
            stopped = why[i] == _EOS
            hidden = None
            if st_h is not None:
                h = st_h[:t, i]  # (t, L, d), a strided view of the batch's host buffer
                # one copy either way: a bf16/fp16 capture converts, a float32 one is cloned
                hidden = h.float() if h.dtype != torch.float32 else h.clone()
            elif capture:
                hidden = torch.zeros(0, L, d)
            extra: dict[str, Any] = {
                "eos_logprob": float(lp_m[t, i]) if stopped else None,
                "stop": _STOP_NAMES[why[i]],
            }
            if tops is not None:
                # (T, k) log-probs and token ids of the k most likely tokens at each step
                extra["top_logprobs"] = tops[0][:t, i].clone()
                extra["top_ids"] = tops[1][:t, i].clone()
            text = tok.decode(tid, skip_special_tokens=True)
            if why[i] == _STOP:  # API convention: the text ends before the stop string
                text = text[: min(text.find(s) for s in cfg.stop if s in text)]
            answers.append(
                Answer(
                    token_ids=tid,
                    text=text,
                    hidden=hidden,
                    logprobs=lp_m[:t, i].clone(),
                    entropy=ent_m[:t, i].clone(),
                    self_certainty=cert_m[:t, i].clone(),
                    confidence=conf_m[:t, i].clone(),
                    extra=extra,
                )
            )
        results.append(
            PromptResult(
                prompt=p,
                answers=answers,
                prompt_hidden=ph[b] if ph is not None else None,
                projected=cfg.project.tag() if capture and cfg.project is not None else "",
            )
        )
    return results


def _refill_fits(
    lm: LoadedModel, n_prompts: int, cfg: SampleConfig, layers: tuple[int, ...], capture: bool
) -> bool:
    """Refill keeps every prompt's per-step buffers on the device for the whole call (rows start
    at different steps, so the chunked host flush of the one-batch loop does not apply)."""
    if not lmx.is_reserved(lmx.new_cache(lm, reserve=1)):  # e.g. sliding-window layers
        return False
    if not capture:
        return True
    esize = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    width = lm.fingerprint.hidden_size
    if cfg.project is not None:
        width, esize = cfg.project.k, 4
    need = cfg.max_new_tokens * n_prompts * cfg.n * len(layers) * width * esize
    return need <= CAPTURE_BUFFER_BYTES


def _sample_refill(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    cfg: SampleConfig,
    layers: tuple[int, ...],
    capture: bool,
    B: int,
    streams: tuple[int, int] | None = None,
) -> list[PromptResult]:
    """``sample_prompts`` with at most B prompts in the decode batch and refill (see there).

    Every row keeps its own step counter (all rows of a prompt share it): a row's token, stats and
    state at its step t go to column (t, row) of the per-call buffers, its uniform is U[t, row].
    Each iteration: draw for every row in the batch; drop the prompts none of whose rows needs
    another forward (and dead rows, whenever the cache is copied anyway); prefill the next prompts
    into the free slots (their first draw comes from the prefill's logits) and join them to the
    batch, left-padded; feed the drawn tokens; rows fed their last allowed token leave.
    """
    model, tok = lm.model, lm.tokenizer
    dev = lm.device
    W, N, T = len(prompts), cfg.n, cfg.max_new_tokens
    R = W * N
    seqs, eos_t, padv, U = _batch_inputs(lm, prompts, cfg, streams)
    cap_layers = layers if capture else ()
    _, head, softcap = lmx.lm_parts(model)
    P, d = _projector(lm, cfg, layers, capture)
    L = len(layers)
    K = cfg.top_logprobs
    bufs = _StepBuffers.alloc(T, R, K, padv, dev)
    tok_buf, lp_buf, ent_buf, cert_buf, conf_buf, topv_buf, topi_buf, lengths, reason = bufs.parts()
    st_buf: torch.Tensor | None = None
    prompt_hidden: torch.Tensor | None = None

    def draw(logits: torch.Tensor, rows: torch.Tensor, rstep: torch.Tensor, alive: torch.Tensor):
        """Draw rows' tokens at their steps, record them; returns (tokens, alive, rows to feed)."""
        nxt, alive = bufs.record(logits, cfg, U[rstep, rows], rows, rstep, alive, padv, eos_t)
        feed = alive
        if cfg.stop:
            pre = alive
            alive = _check_stops(tok, cfg.stop, tok_buf, T, rows, alive, lengths, reason)
            feed = pre if capture else alive  # a stop string's last token is fed for its state
        return nxt, alive, feed

    # The batch: cache rows <-> original rows ``active``; per-row mask, next position, step.
    cache = lmx.new_cache(lm, reserve=T)
    long0 = torch.zeros(0, dtype=torch.long, device=dev)
    active, rstep, nxt, next_pos = long0, long0, long0, long0
    alive = torch.zeros(0, dtype=torch.bool, device=dev)
    mask = torch.zeros(0, 1, dtype=torch.long, device=dev)
    logits = torch.zeros(0, 1, device=dev)  # (rows, V) of the batch, from the last forward
    todo = list(range(W))
    while True:
        feed = alive
        if len(active):
            nxt, alive, feed = draw(logits, active, rstep, alive)
        # rows that still need a forward: alive, and not past their last step (with capture, the
        # last drawn token is fed once more for its state)
        need = feed & ((rstep < T - 1) | capture)
        n_need = int(need.sum())
        in_flight = set((active // N).tolist())
        busy = set((active[need] // N).tolist())
        free = B - len(busy)
        if len(busy) < len(in_flight) or n_need <= 3 * len(active) // 4:
            keep = need.nonzero().squeeze(1)
            if len(keep) < len(active):
                cache.batch_select_indices(keep)
                active, alive, rstep, nxt = active[keep], alive[keep], rstep[keep], nxt[keep]
                mask, next_pos = mask[keep], next_pos[keep]
        # Joining copies the whole cache, so slots are refilled a half batch at a time (or when
        # the batch ran dry), not one prompt at a time.
        while todo and (free >= max(1, B // 2) or (free > 0 and not len(active))):
            bs, todo = todo[:free], todo[free:]
            out, pmask, pc = _prefill(lm, [seqs[b] for b in bs], padv, cap_layers, T)
            if capture:
                ph = _states(out, layers, P)  # (len(bs), L, d|k)
                if prompt_hidden is None:
                    prompt_hidden = ph.new_zeros(W, L, d)
                    st_buf = ph.new_zeros(T, R, L, d)
                prompt_hidden[bs] = ph
            lg = lmx.head_logits(head, softcap, out.last[:, -1]).repeat_interleave(N, 0)
            pc.batch_repeat_interleave(N)
            pmask = pmask.repeat_interleave(N, 0)
            rows = torch.tensor(bs, device=dev)[:, None] * N + torch.arange(N, device=dev)
            rows = rows.reshape(-1)
            r0 = torch.zeros(len(rows), dtype=torch.long, device=dev)
            ones = torch.ones(len(rows), dtype=torch.bool, device=dev)
            n_nxt, n_alive, n_feed = draw(lg, rows, r0, ones)
            n_need = n_feed & ((r0 < T - 1) | capture)
            keep = n_need.nonzero().squeeze(1)
            free -= len(set((rows[keep] // N).tolist()))
            if not len(keep):
                continue
            if len(keep) < len(rows):
                pc.batch_select_indices(keep)
            pmask = pmask[keep]
            a_cols = _span(mask) if len(active) else 0
            b_cols = _span(pmask)
            n = max(a_cols, b_cols)
            lmx.cache_join(cache, pc, a_cols, b_cols, n)
            m = mask.new_zeros(len(active) + len(keep), n)
            if a_cols:
                m[: len(active), n - a_cols :] = mask[:, mask.shape[1] - a_cols :]
            m[len(active) :, n - b_cols :] = pmask[:, pmask.shape[1] - b_cols :]
            mask = m
            next_pos = torch.cat([next_pos, pmask.sum(-1)])
            active, rstep = torch.cat([active, rows[keep]]), torch.cat([rstep, r0[keep]])
            alive, nxt = torch.cat([alive, n_alive[keep]]), torch.cat([nxt, n_nxt[keep]])
        if not len(active):
            break
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
        out = lmx.forward(
            lm, nxt[:, None], mask, layers=cap_layers, position_ids=next_pos[:, None], cache=cache
        )
        next_pos = next_pos + 1
        if st_buf is not None:
            st_buf[rstep, active] = _states(out, layers, P)
        rstep = rstep + 1
        more = rstep < T  # rows fed their last token leave now (whole prompts: steps are shared)
        last = out.last[:, -1]
        if not bool(more.all()):
            keep = more.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, alive, rstep, nxt = active[keep], alive[keep], rstep[keep], nxt[keep]
            mask, next_pos, last = mask[keep], next_pos[keep], last[keep]
        logits = lmx.head_logits(head, softcap, last)

    host = [_to_host(x) for x in (tok_buf, lp_buf, ent_buf, cert_buf, conf_buf)]
    host += [_to_host(lengths), _to_host(reason)]
    tops = (_to_host(topv_buf), _to_host(topi_buf)) if K else None  # type: ignore[arg-type]
    st_h = _to_host(st_buf) if st_buf is not None else None
    ph_h = _to_host(prompt_hidden) if prompt_hidden is not None else None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    if capture and st_h is None:  # no prompt needed a forward (cannot happen with capture)
        st_h = torch.zeros(T, R, L, d)
    return _results(lm, prompts, cfg, host, tops, st_h, ph_h, capture, (L, d))


def _check_stops(
    tok: Any,
    stops: Sequence[str],
    tok_buf: torch.Tensor,
    steps: int,
    active: torch.Tensor,
    alive: torch.Tensor,
    lengths: torch.Tensor,
    reason: torch.Tensor,
) -> torch.Tensor:
    """Stop rows whose text so far contains a stop string (the cut itself is made at the end)."""
    rows = active[alive].tolist()
    if not rows:
        return alive
    toks = tok_buf[:steps].cpu()
    lens = lengths.cpu()
    hit = [
        any(s in tok.decode(toks[: lens[r], r].tolist(), skip_special_tokens=True) for s in stops)
        for r in rows
    ]
    if not any(hit):
        return alive
    hit_rows = torch.tensor([r for r, h in zip(rows, hit) if h], device=active.device)
    cut = alive & torch.isin(active, hit_rows)
    reason[active] = torch.where(cut, _STOP, reason[active]).to(torch.int8)
    return alive & ~cut


def sample_prompt(
    lm: LoadedModel,
    prompt: Prompt,
    cfg: SampleConfig,
    layers: tuple[int, ...] | None = None,
    capture: bool = True,
    prune: PruneHook | None = None,
) -> PromptResult:
    """Draw ``cfg.n`` answers to one prompt (``sample_prompts`` with a batch of one)."""
    return sample_prompts(lm, [prompt], cfg, layers, capture, prune)[0]


@torch.inference_mode()
def teacher_force(
    lm: LoadedModel,
    prompt: Prompt | str,
    answers: Sequence[str | Sequence[int]],
    layers: tuple[int, ...] | str = "all",
    batch_size: int = 16,
) -> list[Answer]:
    """Features of given answers to one prompt: the prompt is run once and its keys and values
    shared by the answers' rows (as the sampler shares a prompt's prefill), then the answers run
    over it, ``batch_size`` at a time, so each answer costs its own tokens only.

    ``answers`` are strings (tokenised after the prompt text) or token-id lists. The LM head runs
    only on the positions that predict answer tokens (``logits_to_keep`` in spirit).
    """
    tok = lm.tokenizer
    if isinstance(layers, str):
        layers = parse_layers(layers, lm.fingerprint.n_layers)
    _, head, softcap = lmx.lm_parts(lm.model)
    device = lm.device
    ptext = prompt if isinstance(prompt, str) else prompt_text(tok, prompt)
    p_ids = lmx.encode(tok, ptext)
    eos = set(lmx.eos_ids(lm))
    seqs = []
    for a in answers:
        a_ids = lmx.encode(tok, a) if isinstance(a, str) else list(a)
        if not a_ids:
            raise HsrmError("teacher_force: an answer has no tokens (empty answer)")
        seqs.append(a_ids)
    out_answers: list[Answer] = []
    P = len(p_ids)
    if P == 0:
        raise HsrmError(
            "teacher_force: the prompt has no tokens (its last state predicts the answer)"
        )
    padv = tok.pad_token_id if tok.pad_token_id is not None else 0
    # The prompt once, into a cache every answer row then reads (as the sampler's shared prefill
    # does): before, each row recomputed the whole prompt, B x (P + T) token positions a chunk
    # instead of B x T. Each chunk extends a copy of it.
    prompt_cache = lmx.new_cache(lm)
    pre = lmx.forward(lm, torch.tensor([p_ids], device=device), layers=(), cache=prompt_cache)
    for b0 in range(0, len(seqs), batch_size):
        chunk = seqs[b0 : b0 + batch_size]
        B, T = len(chunk), max(len(s) for s in chunk)
        cache = copy.deepcopy(prompt_cache) if b0 + batch_size < len(seqs) else prompt_cache
        cache.batch_select_indices(torch.zeros(B, dtype=torch.long, device=device))
        ids, amask, _ = lmx.pad(chunk, padv, "right", device)  # (B, T); pads after the answer
        mask = torch.cat([torch.ones(B, P, dtype=amask.dtype, device=device), amask], 1)
        pos = torch.arange(P, P + T, device=device).expand(B, T)
        out = lmx.forward(lm, ids, mask, layers=layers, position_ids=pos, cache=cache)
        # the prompt's last state predicts answer token 0, answer state t predicts token t + 1
        states = torch.cat([pre.last[:, -1:].expand(B, 1, -1), out.last[:, : T - 1]], 1)
        logp = torch.log_softmax(lmx.head_logits(head, softcap, states), -1)  # (B, T, V)
        hs = out.stack(layers)  # (B, T, L, d)
        for i, s in enumerate(chunk):
            t = len(s)
            tgt = torch.tensor(s, device=device)
            lp = logp[i, :t].gather(-1, tgt[:, None]).squeeze(-1)
            stats = token_stats(logp[i, :t])
            out_answers.append(
                Answer(
                    token_ids=s,
                    text=tok.decode([x for x in s if x not in eos], skip_special_tokens=True),
                    hidden=hs[i, :t].float().cpu(),
                    logprobs=lp.float().cpu(),
                    entropy=stats["entropy"].float().cpu(),
                    self_certainty=stats["self_certainty"].float().cpu(),
                    confidence=stats["confidence"].float().cpu(),
                )
            )
    return out_answers
