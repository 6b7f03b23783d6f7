"""The decode loops' batch machinery: per-step buffers, left-padded batch inputs, the shared-prefix
prefill (one prompt prefill whose KV cache its N samples share), and moving captured states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hsrm import lm as lmx
from hsrm.capture.base import SampleConfig, _draw, _prompt_generator, token_stats
from hsrm.errors import HsrmError
from hsrm.models import LoadedModel

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
