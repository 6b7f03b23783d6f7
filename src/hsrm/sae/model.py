"""Sparse autoencoders on one layer's activations: read / write SAELens 6 folders, train a TopK SAE.

Format (SAELens 6, ``SAE.save_model`` / ``SAE.load_from_disk``): a folder with ``cfg.json``
(``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``architecture`` ``standard|topk|jumprelu``, ``k`` and
``rescale_acts_by_decoder_norm`` for TopK, and a ``metadata`` object with ``hook_name``,
``model_name``, ``sae_lens_version``, ...) and ``sae_weights.safetensors`` (``W_enc`` (d_in, d_sae),
``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,), ``threshold`` (d_sae,) for JumpReLU).
Older folders load too: SAELens < 6 (hook keys ``hook_point`` / ``hook_name`` / ``hook_layer`` at
the top level, ``activation_fn_str`` / ``activation_fn`` + ``activation_fn_kwargs.k`` instead of
``architecture``, ``log_threshold`` instead of ``threshold``, a ``scaling_factor`` tensor) and
hsrm's own earlier ``meta`` object, so a pretrained SAE on disk (Gemma Scope, Llama Scope) works.

Which hidden state an SAE reads comes from its TransformerLens hook name, mapped onto hsrm's
Hugging Face hidden-state indices by ``hook_to_hidden_index`` (``blocks.L.hook_resid_pre`` is index
L; ``blocks.L.hook_resid_post`` is L + 1, except the last block's, which is the state *before* the
final norm: hsrm's ``prenorm`` layer, ``capture.prenorm_index``). A hook hsrm does not capture is an
error, never a silent fallback. The mapping assumes TransformerLens ran the model's weights
unprocessed (or an RMSNorm model, where TransformerLens does not centre the residual stream);
``fold_ln`` / ``center_writing_weights`` on a LayerNorm model shift the states an SAE saw.

``normalize_activations``: ``none``; ``constant_norm_rescale`` (x * sqrt(d_in) / ||x|| per token)
and ``layer_norm`` (per-token standardisation) are applied at encode time as SAELens does;
``expected_average_only_in`` (an unfolded dataset-wide scale) and ``covariance_whitening`` are
refused with the SAELens call that folds them. ``rescale_acts_by_decoder_norm`` (TopK / standard)
is folded into the weights on load (exact: SAELens's ``fold_W_dec_norm``).

Why train without SAELens: its trainer runs through TransformerLens hooks on a model it loads by
name from the Hub, which these offline machines cannot do. So hsrm trains with the smallest TopK
trainer (Gao et al., 2024, "Scaling and evaluating sparse autoencoders"): decoder rows kept at unit
norm, encoder initialised as the decoder's transpose, ``b_dec`` at the data mean, AuxK loss (1/32,
k_aux = d_in / 2) on latents dead for ``dead_after`` tokens, inputs scaled to E||x||^2 = d_in during
training with the scale folded back into the saved weights (so the saved SAE reads raw activations).
The ``sae-lens`` package itself (extra ``sae``) is used by the tests, to check both directions.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from hsrm.capture import prenorm_index
from hsrm.errors import HsrmError
from hsrm.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "standard", "jumprelu")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
# The SAELens format version hsrm writes: SAELens reads a cfg whose metadata has no
# sae_lens_version as a pre-6 config and then drops the metadata object.
SAELENS_FORMAT_VERSION = "6.0.0"
# Hook keys SAELens < 6 kept at the top level of cfg.json (renamed as SAELens's
# handle_pre_6_0_config does).
_PRE6_META = {
    "hook_point": "hook_name",
    "hook_name": "hook_name",
    "hook_point_layer": "tl_block",  # the block index, not a hidden-state index
    "hook_layer": "tl_block",
    "hook_point_head_index": "hook_head_index",
    "hook_head_index": "hook_head_index",
    "model_name": "model_name",
    "dataset_path": "dataset_path",
    "context_size": "context_size",
    "prepend_bos": "prepend_bos",
    "hf_hook_name": "hf_hook_name",
    "sae_lens_version": "sae_lens_version",
}


# -- hooks <-> hidden-state indices ---------------------------------------------------------------
def hook_to_hidden_index(hook_name: str, n_layers: int) -> int:
    """TransformerLens (or HF module) hook name -> hsrm hidden-state index for a model with
    ``n_layers`` blocks. Raises HsrmError for hooks hsrm does not capture (attention / MLP outputs,
    ``hook_resid_mid``, ``ln_final`` with folded weights, ...)."""
    name = hook_name.strip()
    last = n_layers - 1
    if m := re.fullmatch(r"hidden_states\.(\d+)", name):  # hsrm's own name
        idx = int(m.group(1))
        if idx > prenorm_index(n_layers):
            raise HsrmError(f"SAE hook {name!r}: index out of range for {n_layers} layers")
        return idx
    if m := re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", name):
        L, kind = int(m.group(1)), m.group(2)
    elif m := re.fullmatch(r"model\.layers\.(\d+)", name):  # SAELens's hf_hook_name
        L, kind = int(m.group(1)), "post"  # an HF decoder layer's output
    else:
        raise HsrmError(
            f"SAE hook {name!r} is not a residual-stream state hsrm captures; it reads "
            "blocks.L.hook_resid_pre, blocks.L.hook_resid_post, model.layers.L and hidden_states.N"
        )
    if L > last:
        raise HsrmError(f"SAE hook {name!r}: the model has blocks 0..{last}")
    if kind == "pre":
        return L
    # the last block's output is TransformerLens's pre-norm state; HF's last hidden state is
    # after the final norm, so it maps onto hsrm's `prenorm` pseudo-layer
    return prenorm_index(n_layers) if L == last else L + 1


def hidden_index_to_hook(index: int, n_layers: int) -> str:
    """hsrm hidden-state index -> the TransformerLens hook that reads the same state; the
    post-norm last state (index ``n_layers``) has none, so it keeps hsrm's ``hidden_states.N``."""
    if 0 <= index < n_layers:
        return f"blocks.{index}.hook_resid_pre"
    if index == prenorm_index(n_layers):
        return f"blocks.{n_layers - 1}.hook_resid_post"
    if index == n_layers:
        return f"hidden_states.{index}"
    raise HsrmError(f"hidden-state index {index} out of range 0..{prenorm_index(n_layers)}")


def hook_metadata(index: int, n_layers: int, model_name: str | None = None) -> dict[str, Any]:
    """SAELens 6 ``metadata`` for an SAE hsrm trains on hidden-state ``index``."""
    meta: dict[str, Any] = {
        "hook_name": hidden_index_to_hook(index, n_layers),
        "hook_head_index": None,
        "hsrm_hidden_state_index": index,
        "hsrm_n_layers": n_layers,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
    }
    if model_name:
        meta["model_name"] = model_name
        meta["model_class_name"] = "AutoModelForCausalLM"
    return meta


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
        normalize_activations: str = "none",
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise HsrmError(
                f"SAE architecture {architecture!r} is not supported; use one of {ARCHITECTURES}"
            )
        if normalize_activations not in NORMALIZATIONS:
            raise HsrmError(
                f"SAE normalize_activations {normalize_activations!r} is not supported; "
                f"use one of {NORMALIZATIONS}"
            )
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.normalize_activations = normalize_activations
        self.meta = dict(meta or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))

    @property
    def hook_name(self) -> str | None:
        v = self.meta.get("hook_name")
        return str(v) if v else None

    def hidden_state_index(self, n_layers: int) -> int | None:
        """The hsrm hidden-state index this SAE reads on a model with ``n_layers`` blocks, from its
        hook name (see ``hook_to_hidden_index``); None when the cfg names no hook at all. Raises
        HsrmError for a hook hsrm does not capture or one on a single attention head."""
        if self.meta.get("hook_head_index") is not None:
            raise HsrmError(
                f"SAE hook {self.hook_name!r} head {self.meta['hook_head_index']}: per-head SAEs "
                "are not supported (hsrm reads residual-stream states)"
            )
        if self.hook_name:
            return hook_to_hidden_index(self.hook_name, n_layers)
        if self.meta.get("hf_hook_name"):
            return hook_to_hidden_index(str(self.meta["hf_hook_name"]), n_layers)
        # hsrm's own earlier SAEs: a hidden-state index with no hook name
        for key in ("hsrm_hidden_state_index", "hook_layer"):
            if self.meta.get(key) is not None:
                return int(self.meta[key])
        return None

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """SAELens's run-time input normalisation (``run_time_activation_norm_fn_in``)."""
        if self.normalize_activations == "constant_norm_rescale":
            return x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        if self.normalize_activations == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            return x / (x.std(dim=-1, keepdim=True) + 1e-5)
        return x

    def _denormalize(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if self.normalize_activations == "none":
            return out
        if x is None:
            raise HsrmError(
                f"SAE decode: normalize_activations={self.normalize_activations!r} needs the "
                "input activations (decode(f, x)) to undo the per-token normalisation"
            )
        x = x.to(self.W_enc.dtype)
        if self.normalize_activations == "constant_norm_rescale":
            return out * x.norm(dim=-1, keepdim=True) / (self.d_in**0.5)
        mu = x.mean(dim=-1, keepdim=True)
        return out * (x - mu).std(dim=-1, keepdim=True) + mu

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalize(x.to(self.W_enc.dtype))
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

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction of ``x`` from its latents ``f`` (``x`` is needed only to undo a
        per-token input normalisation)."""
        return self._denormalize(f @ self.W_dec + self.b_dec, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    @torch.no_grad()
    def _fold_decoder_norm(self) -> None:
        """``rescale_acts_by_decoder_norm`` folded into the weights (SAELens's ``fold_W_dec_norm``):
        pre-activations scaled by ||W_dec_j|| and unit decoder rows give the same latents and
        reconstruction."""
        n = self.W_dec.norm(dim=-1).clamp_min(1e-8)  # (d_sae,)
        self.W_dec.div_(n[:, None])
        self.W_enc.mul_(n[None, :])
        self.b_enc.mul_(n)

    # -- SAELens folder format ------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """``cfg.json`` exactly as SAELens 6's ``SAEConfig.to_dict`` writes it."""
        meta = {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            **self.meta,
        }
        if "hook_layer" in meta:  # hsrm's earlier key for the hidden-state index
            meta.setdefault("hsrm_hidden_state_index", meta.pop("hook_layer"))
        cfg: dict[str, Any] = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": meta,
            "architecture": self.architecture,
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = False  # folded on load; hsrm's own never set
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
        """Load an SAE folder: SAELens 6, SAELens < 6, or hsrm's earlier ``meta`` layout."""
        path = Path(path)
        cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise HsrmError(f"{path}: not an SAE folder (needs {CFG_FILE} and {WEIGHTS_FILE})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise HsrmError(f"{cfg_path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(cfg, dict):
            raise HsrmError(f"{cfg_path}: expected a JSON object")
        tensors = load_file(str(w_path))
        if "d_in" not in cfg:
            raise HsrmError(f"{cfg_path}: missing field 'd_in'")
        if cfg.get("d_sae") is None:  # some SAELens < 6 configs give only the expansion factor
            if cfg.get("expansion_factor") is None:
                raise HsrmError(f"{cfg_path}: missing field 'd_sae'")
            cfg["d_sae"] = int(cfg["d_in"]) * int(cfg["expansion_factor"])
        arch = cfg.get("architecture")
        act = cfg.get("activation_fn_str", cfg.get("activation_fn"))
        if arch is None:  # SAELens < 6 named the activation instead
            arch = {"relu": "standard", "topk": "topk", None: "standard"}.get(act, act)
        if arch == "standard" and act == "topk":  # SAELens 5: architecture standard + topk fn
            arch = "topk"
        if arch not in ARCHITECTURES:
            raise HsrmError(
                f"{cfg_path}: architecture {arch!r} is not supported; hsrm reads {ARCHITECTURES}"
            )
        norm = cfg.get("normalize_activations", "none")
        norm = {None: "none", False: "none", True: "expected_average_only_in"}.get(norm, norm)
        if norm == "expected_average_only_in":
            raise HsrmError(
                f"{cfg_path}: normalize_activations='expected_average_only_in' leaves a dataset-wide "
                "scale unfolded; fold it first (SAELens: sae.fold_activation_norm_scaling_factor(s); "
                "sae.save_model(path))"
            )
        if norm not in NORMALIZATIONS:
            raise HsrmError(
                f"{cfg_path}: normalize_activations={norm!r} is not supported; hsrm reads "
                f"{NORMALIZATIONS} (SAELens: fold_activation_whitening for covariance_whitening)"
            )
        if cfg.get("reshape_activations", "none") not in ("none", None):
            raise HsrmError(
                f"{cfg_path}: reshape_activations={cfg['reshape_activations']!r} (attention "
                "head outputs) is not supported; hsrm reads residual-stream states"
            )
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 32
        meta: dict[str, Any] = {}
        for key, new in _PRE6_META.items():  # SAELens < 6: hook keys at the top level
            if cfg.get(key) is not None:
                meta.setdefault(new, cfg[key])
        for obj in ("meta", "metadata"):  # hsrm's earlier name, then SAELens 6's
            if isinstance(cfg.get(obj), dict):
                meta.update(
                    {k_: v for k_, v in cfg[obj].items() if v is not None or k_ not in meta}
                )
        sae = cls(
            int(cfg["d_in"]),
            int(cfg["d_sae"]),
            arch,
            int(k),
            bool(cfg.get("apply_b_dec_to_input", True)),
            meta,
            norm,
        )
        if "log_threshold" in tensors and "threshold" not in tensors:  # older JumpReLU checkpoints
            tensors["threshold"] = tensors.pop("log_threshold").float().exp()
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
        if "scaling_factor" in tensors:  # SAELens < 6 finetuning scale on the latents (decode only)
            s = tensors["scaling_factor"].float()
            if not torch.allclose(s, torch.ones_like(s)):
                with torch.no_grad():
                    sae.W_dec.mul_(s[:, None])
        if cfg.get("rescale_acts_by_decoder_norm"):
            if arch == "jumprelu":
                raise HsrmError(
                    f"{cfg_path}: rescale_acts_by_decoder_norm with a JumpReLU SAE is not supported"
                )
            sae._fold_decoder_norm()
        return sae.eval()
