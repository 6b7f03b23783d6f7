"""Sparse autoencoders on one layer's activations: load / save in SAELens's folder format, train a TopK SAE.

Format (SAELens >= 6): a folder with ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``
``topk|standard|jumprelu``, ``k``, ``apply_b_dec_to_input``, ``normalize_activations``, ``meta``
with ``hook_name`` / ``hook_layer`` / ``model_name``) and ``sae_weights.safetensors`` (``W_enc``
(d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``, and ``threshold`` for JumpReLU).
Older SAELens configs with ``hook_layer`` / ``activation_fn_str`` at the top level load too, so a
pretrained SAE a user has on disk (Gemma Scope, Llama Scope) works.

Why not SAELens itself: ``pip install sae-lens`` pulls ~50 packages (transformer-lens, wandb,
datasets, pyarrow, pandas, plotly, statsmodels, nltk, opentelemetry, ...), and its trainer runs
through TransformerLens hooks on a model it loads by name from the Hub, which these offline
machines cannot do. So hsrm reads and writes the format itself and trains with the smallest TopK
trainer (Gao et al., 2024, "Scaling and evaluating sparse autoencoders"): decoder rows kept at unit
norm, encoder initialised as the decoder's transpose, ``b_dec`` at the data mean, AuxK loss (1/32,
k_aux = d_in / 2) on latents dead for ``dead_after`` tokens, inputs scaled to E||x||^2 = d_in during
training with the scale folded back into the saved weights (so the saved SAE reads raw activations).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from hsrm.errors import HsrmError
from hsrm.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "standard", "jumprelu")


class SAE(nn.Module):
    """An SAE over d_in-dimensional activations; ``encode`` (..., d_in) -> (..., d_sae)."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        k: int = 32,
        apply_b_dec_to_input: bool = True,
        meta: dict[str, Any] | None = None,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise HsrmError(
                f"SAE architecture {architecture!r} is not supported; use one of {ARCHITECTURES}"
            )
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.meta = dict(meta or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))

    @property
    def hook_layer(self) -> int | None:
        v = self.meta.get("hook_layer")
        return int(v) if v is not None else None

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc  # (..., d_sae)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            top = pre.topk(min(self.k, self.d_sae), dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # -- SAELens folder format ------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        cfg = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "meta": self.meta,
            "architecture": self.architecture,
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
        return cfg

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}
        with atomic_dir(path, "sae") as tmp:
            (tmp / WEIGHTS_FILE).write_bytes(save(tensors))
            atomic_write_json(tmp / CFG_FILE, self.config_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> SAE:
        """Load an SAE folder in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``)."""
        path = Path(path)
        cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise HsrmError(f"{path}: not an SAE folder (needs {CFG_FILE} and {WEIGHTS_FILE})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise HsrmError(f"{cfg_path}:{e.lineno}: malformed JSON ({e.msg})") from None
        for key in ("d_in", "d_sae"):
            if key not in cfg:
                raise HsrmError(f"{cfg_path}: missing field {key!r}")
        arch = cfg.get("architecture")
        if arch is None:  # SAELens < 6 wrote activation_fn_str instead
            act = cfg.get("activation_fn_str", "relu")
            arch = {"relu": "standard", "topk": "topk"}.get(act, act)
        if arch not in ARCHITECTURES:
            raise HsrmError(
                f"{cfg_path}: architecture {arch!r} is not supported; hsrm reads {ARCHITECTURES}"
            )
        norm = cfg.get("normalize_activations", "none") or "none"
        if norm != "none":
            raise HsrmError(
                f"{cfg_path}: normalize_activations={norm!r} is not supported; fold the scaling factor "
                "into the weights first (SAELens: sae.fold_activation_norm_scaling_factor)"
            )
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 32
        meta = dict(cfg.get("meta") or {})
        for key in ("hook_name", "hook_layer", "model_name"):
            if key in cfg and key not in meta:
                meta[key] = cfg[key]
        if meta.get("hook_layer") is None and isinstance(meta.get("hook_name"), str):
            # "blocks.12.hook_resid_post" -> hidden-state index 13 (hsrm's index 0 is the embeddings)
            parts = meta["hook_name"].split(".")
            if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
                meta["hook_layer"] = int(parts[1]) + (1 if parts[2] == "hook_resid_post" else 0)
        sae = cls(
            int(cfg["d_in"]),
            int(cfg["d_sae"]),
            arch,
            int(k),
            bool(cfg.get("apply_b_dec_to_input", True)),
            meta,
        )
        tensors = load_file(str(w_path))
        need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
        missing = [n for n in need if n not in tensors]
        if missing:
            raise HsrmError(f"{w_path}: missing tensor(s) {missing}; has {sorted(tensors)}")
        for n in need:
            want = tuple(getattr(sae, n).shape)
            if tuple(tensors[n].shape) != want:
                raise HsrmError(
                    f"{w_path}: tensor {n} has shape {tuple(tensors[n].shape)}, cfg says {want}"
                )
        sae.load_state_dict({n: tensors[n].float() for n in need})
        return sae.eval()


@torch.no_grad()
def _layer_states(
    lm: Any, decoder: Any, encs: list[list[int]], layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded forward pass: (B, T, d) float32 states of ``layer`` on CPU and the
    (B, T) 0/1 mask of real tokens."""
    T = max(len(e) for e in encs)
    ids = torch.full((len(encs), T), lm.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    out = decoder(
        input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), output_hidden_states=True
    )
    return out.hidden_states[layer].float().cpu(), mask


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
    if not 0 <= layer <= lm.fingerprint.n_layers:
        raise HsrmError(f"layer {layer} out of range 0..{lm.fingerprint.n_layers}")
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
        sse += float((x - sae.decode(f)).pow(2).sum())
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
    layer = sae.hook_layer if layer is None else layer
    if layer is None:
        raise HsrmError("top_activating_tokens: the SAE's cfg has no hook_layer; pass layer=")
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
