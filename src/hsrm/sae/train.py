"""Training and reading SAEs on one layer's activations: collect a layer's states from a model, train
the smallest TopK SAE (``train_topk_sae``), its reconstruction statistics, and the tokens that
activate a latent most. The SAE itself and its SAELens folder format are ``hsrm.sae.model``."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hsrm.capture import prenorm_index
from hsrm.errors import HsrmError
from hsrm.lm import PrenormTap
from hsrm.sae.model import SAE

log = logging.getLogger(__name__)


@torch.no_grad()
def _layer_states(
    lm: Any, decoder: Any, encs: list[list[int]], layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded forward pass: (B, T, d) float32 states of hidden-state index ``layer``
    (``prenorm_index`` included) on CPU and the (B, T) 0/1 mask of real tokens."""
    T = max(len(e) for e in encs)
    ids = torch.full((len(encs), T), lm.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    tap = PrenormTap(decoder, [layer], lm.fingerprint.n_layers)
    try:
        out = decoder(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            output_hidden_states=True,
        )
        states = tap.states(out.hidden_states)
    finally:
        tap.close()
    return states[layer].float().cpu(), mask


# -- activations --------------------------------------------------------------------------------
@torch.no_grad()
def collect_activations(
    lm,
    texts: Sequence[str],
    layer: int,
    batch_size: int = 16,
    skip_first: int = 1,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """(N, d) token activations at hidden-state index ``layer`` over ``texts`` (padding removed; the
    first ``skip_first`` tokens of each text dropped: the attention-sink position has outlier norm)."""
    from tqdm.auto import tqdm

    tok, model = lm.tokenizer, lm.model
    if not 0 <= layer <= prenorm_index(lm.fingerprint.n_layers):
        raise HsrmError(
            f"layer {layer} out of range 0..{prenorm_index(lm.fingerprint.n_layers)} "
            f"({prenorm_index(lm.fingerprint.n_layers)} = prenorm)"
        )
    decoder = model.get_decoder()
    out, total = [], 0
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    for b in tqdm(range(0, len(texts), batch_size), desc=f"activations L{layer}", leave=False):
        batch = [texts[i] for i in order[b : b + batch_size]]
        enc = [tok(t, add_special_tokens=False)["input_ids"][:512] for t in batch]
        h, mask = _layer_states(lm, decoder, enc, layer)  # (B, T, d), (B, T)
        keep = mask.bool().clone()
        keep[:, :skip_first] = False
        out.append(h[keep])
        total += int(keep.sum())
        if max_tokens is not None and total >= max_tokens:
            break
    acts = torch.cat(out) if out else torch.zeros(0, lm.fingerprint.hidden_size)
    return acts[:max_tokens] if max_tokens is not None else acts


# -- training -----------------------------------------------------------------------------------
def train_topk_sae(
    acts: torch.Tensor,
    d_sae: int = 2048,
    k: int = 32,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 5e-4,
    aux_coef: float = 1 / 32,
    dead_after: int = 50_000,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> tuple[SAE, dict[str, Any]]:
    """Train a TopK SAE on (N, d_in) activations (Gao et al., 2024; see module docstring).

    Returns the SAE (reading raw activations) and its training stats: fraction of variance explained
    and dead-latent share on the training activations, final losses."""
    from tqdm.auto import trange

    if acts.ndim != 2 or len(acts) < 2:
        raise HsrmError(
            f"train_topk_sae: need (N >= 2, d) activations, got shape {tuple(acts.shape)}"
        )
    if not 0 < k <= d_sae:
        raise HsrmError(f"train_topk_sae: need 0 < k <= d_sae, got k={k}, d_sae={d_sae}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    acts = acts.float()
    N, d = acts.shape
    mean = acts.mean(0)
    scale = float(((acts - mean).pow(2).sum(1).mean() / d).sqrt()) or 1.0
    sae = SAE(d, d_sae, "topk", k, True, meta)
    with torch.no_grad():
        W = torch.randn(d_sae, d, generator=g)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean / scale)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    last_fired = torch.zeros(d_sae, dtype=torch.long)  # tokens seen since each latent last fired
    k_aux = max(1, d // 2)
    hist: list[dict[str, Any]] = []
    for step in trange(steps, desc="train SAE", leave=False):
        idx = torch.randint(0, N, (batch_size,), generator=g)
        x = acts[idx] / scale  # (B, d)
        pre = sae.pre_acts(x)
        f = sae.activate(pre)
        xhat = sae.decode(f)
        err = x - xhat
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        fired = (f > 0).any(0)
        last_fired += batch_size
        last_fired[fired] = 0
        dead = last_fired > dead_after
        aux = torch.zeros(())
        if aux_coef > 0 and int(dead.sum()) > 0:
            ka = min(k_aux, int(dead.sum()))
            top = pre.masked_fill(~dead, -math.inf).topk(ka, dim=-1)
            fa = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
            aux = (fa @ sae.W_dec - err.detach()).pow(2).sum(-1).mean()
            loss = loss + aux_coef * aux
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():  # remove the gradient component parallel to each unit decoder row
            gW = sae.W_dec.grad
            assert gW is not None  # set by loss.backward(): W_dec is in every forward pass
            gW -= (gW * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if step % 100 == 0 or step == steps - 1:
            hist.append(
                {
                    "step": step,
                    "mse": float(mse.detach()),
                    "aux": float(aux.detach()),
                    "dead": int(dead.sum()),
                }
            )
    # Fold the input scale into the weights: the saved SAE reads raw activations.
    with torch.no_grad():
        sae.b_dec.mul_(scale)
        sae.W_enc.div_(scale)
        sae.W_dec.mul_(scale)
    sae.eval()
    stats: dict[str, Any] = sae_stats(sae, acts)
    stats.update(
        {"steps": steps, "batch_size": batch_size, "lr": lr, "n_tokens": N, "history": hist}
    )
    sae.meta.setdefault("hsrm_train", {k_: v for k_, v in stats.items() if k_ != "history"})
    log.info(
        "SAE: FVE %.3f, dead %.1f%%, L0 %.1f", stats["fve"], 100 * stats["dead_share"], stats["l0"]
    )
    return sae, stats


@torch.no_grad()
def sae_stats(sae: SAE, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Fraction of variance explained, dead-latent share (never fires on ``acts``), mean L0."""
    acts = acts.float()
    mean = acts.mean(0)
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for b in range(0, len(acts), batch_size):
        x = acts[b : b + batch_size]
        f = sae.encode(x)
        sse += float((x - sae.decode(f, x)).pow(2).sum())
        sst += float((x - mean).pow(2).sum())
        fired |= (f > 0).any(0)
        l0 += float((f > 0).sum())
    return {
        "fve": 1.0 - sse / max(sst, 1e-12),
        "dead_share": float(1.0 - fired.float().mean()),
        "l0": l0 / max(1, len(acts)),
    }


# -- interpretability ---------------------------------------------------------------------------
@torch.no_grad()
def top_activating_tokens(
    sae: SAE,
    lm,
    texts: Sequence[str],
    latents: Sequence[int],
    layer: int | None = None,
    n_top: int = 5,
    context: int = 6,
    batch_size: int = 16,
) -> dict[int, list[dict[str, Any]]]:
    """For each latent, its ``n_top`` highest activations over ``texts``: the token, the ``context``
    tokens before it, and the activation (SparseRM's Table 2)."""
    layer = sae.hidden_state_index(lm.fingerprint.n_layers) if layer is None else layer
    if layer is None:
        raise HsrmError("top_activating_tokens: the SAE's cfg names no hook; pass layer=")
    tok, decoder = lm.tokenizer, lm.model.get_decoder()
    lat = torch.as_tensor(list(latents), dtype=torch.long)
    best: dict[int, list[tuple[float, int, int]]] = {int(j): [] for j in lat}
    encs = [tok(t, add_special_tokens=False)["input_ids"][:512] for t in texts]
    for b in range(0, len(texts), batch_size):
        enc = encs[b : b + batch_size]
        h, mask = _layer_states(lm, decoder, enc, layer)
        T = h.shape[1]
        f = sae.encode(h)[..., lat]  # (B, T, n_latents)
        f[:, :1] = 0  # attention sink
        f = f * mask[..., None]
        for jj, j in enumerate(lat.tolist()):
            v = f[..., jj].flatten()
            nz = int((v > 0).sum())
            if nz == 0:
                continue
            top = v.topk(min(n_top, nz))
            for val, pos in zip(top.values.tolist(), top.indices.tolist()):
                best[j].append((val, b + pos // T, pos % T))
            best[j] = sorted(best[j], reverse=True)[: 4 * n_top]
    out: dict[int, list[dict[str, Any]]] = {}
    for j, rows in best.items():
        seen, out[j] = set(), []
        for val, ti, p in rows:
            key = tuple(encs[ti][max(0, p - context) : p + 1])
            if key in seen:  # the same prompt shared by several answers
                continue
            seen.add(key)
            out[j].append(
                {
                    "token": tok.decode([encs[ti][p]]),
                    "context": tok.decode(encs[ti][max(0, p - context) : p]),
                    "activation": round(val, 3),
                    "text_index": ti,
                }
            )
        out[j] = out[j][:n_top]
    return out
