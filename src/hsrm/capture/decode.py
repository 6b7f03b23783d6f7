"""The sampler: ``sample_prompts`` decodes B prompts x N samples as one batch with capture, and its
refill variant keeps the batch full as rows finish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hsrm import lm as lmx
from hsrm.capture.base import (
    Answer,
    PromptResult,
    PruneHook,
    SampleConfig,
    SampleView,
    parse_layers,
)
from hsrm.capture.batch import (
    _EOS,
    _PRUNED,
    _STOP,
    _STOP_NAMES,
    CAPTURE_BUFFER_BYTES,
    _batch_inputs,
    _prefill,
    _projector,
    _span,
    _states,
    _StepBuffers,
    _stop_cut,
    _to_host,
)
from hsrm.models import LoadedModel
from hsrm.tasks.base import Prompt


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
