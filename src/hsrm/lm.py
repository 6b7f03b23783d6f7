"""One layer that runs the LM: tokenise, chat-format, pad, forward with chosen hidden states, logits.

Every hsrm module that feeds text through a causal LM (sampling with capture, teacher forcing, the
preference encoder, RL, the judge, SAE collection) goes through these functions instead of padding
by hand, so padding side, position ids, the pre-norm tap, logit soft-capping and end-of-sequence ids
are handled in one place.

Hidden-state index 0 is the embedding output, index ``n_layers`` the last block's output after the
final norm (the Hugging Face convention SWIFT uses), and ``n_layers + 1`` the last block's output
*before* the final norm (``prenorm``, HARP's option).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hsrm.errors import HsrmError

if TYPE_CHECKING:
    from hsrm.models import LoadedModel
    from hsrm.tasks.base import Prompt


def prenorm_index(n_layers: int) -> int:
    """Index of the pseudo-layer "last block's output *before* the final norm" (HARP's pre-norm
    option): one past the post-norm last layer, so ``n_layers + 1``."""
    return n_layers + 1


# ----------------------------------------------------------------------------------------------
# text -> token ids
def prompt_text(tokenizer: Any, prompt: Prompt) -> str:
    """The chat-formatted prompt, assistant turn opened and prefilled. A prompt with no messages is
    plain text (OpenAI's completions API): its ``prefill`` is the whole prompt, no template added."""
    if not prompt.messages:
        return prompt.prefill
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(prompt.messages), tokenize=False, add_generation_prompt=True
        )
    else:  # base models: plain "Q: ... A:" few-shot
        parts = []
        for m in prompt.messages:
            parts.append(("Q: " if m["role"] == "user" else "A: ") + m["content"])
        text = "\n".join(parts) + "\nA: "
    return text + prompt.prefill


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (chat templates already carry theirs)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of the chat-formatted prompt (``prompt_text``)."""
    return encode(tokenizer, prompt_text(tokenizer, prompt))


def pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return eos_ids(lm)[0]


def eos_ids(lm: LoadedModel) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS, the generation config's, and the
    chat templates' end-of-turn tokens. Cached on ``lm``: a 49k-token vocabulary costs ~0.25 s
    per ``get_vocab`` call, which used to be most of the time of sampling one prompt on a CPU."""
    cached = getattr(lm, "_hsrm_eos_ids", None)
    if cached is not None and cached[0] is lm.tokenizer:
        return list(cached[1])
    ids = set()
    tok = lm.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list | tuple):
        ids.update(int(x) for x in gen_eos)
    vocab = tok.get_vocab()
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = vocab.get(special)
        if tid is not None:
            ids.add(int(tid))
    if not ids:
        raise HsrmError("the tokenizer has no end-of-sequence token")
    out = sorted(ids)
    try:
        lm._hsrm_eos_ids = (tok, tuple(out))  # type: ignore[attr-defined]
    except AttributeError:  # a frozen or slotted stand-in: just recompute next time
        pass
    return out


def pad(
    seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right", device: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token-id lists into a batch.

    Returns ``ids`` (B, S), ``mask`` (B, S) 1 on real tokens, and ``position_ids`` (B, S) counting
    real tokens only (so a left-padded row's first real token has position 0, as unpadded).
    Left padding puts every row's last token at column -1 (what decoding with a shared KV cache
    needs); right padding keeps each row's tokens at the same columns as unpadded.
    """
    if side not in ("left", "right"):
        raise HsrmError(f"padding side must be 'left' or 'right', got {side!r}")
    if not seqs:
        raise HsrmError("pad: no sequences")
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_value, dtype=torch.long)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        sl = slice(S - len(s), S) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    if device is not None:
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    return ids, mask, pos


# ----------------------------------------------------------------------------------------------
# the network
def lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder, LM head, final-logit soft-cap or None)."""
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    cfg = getattr(model.config, "text_config", None) or model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return decoder, head, softcap


def cache_kw(decoder: Any, cache: Any) -> dict[str, Any]:
    # transformers >= 5.2x names the argument `cache`; older releases `past_key_values`.
    params = inspect.signature(decoder.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def head_logits(head: Any, softcap: float | None, h: torch.Tensor) -> torch.Tensor:
    """float32 logits of the LM head on states ``h`` (..., d), soft-capped like the model does."""
    logits = head(h).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def logits(lm: LoadedModel, h: torch.Tensor) -> torch.Tensor:
    """float32 next-token logits from final-norm states ``h`` (..., d)."""
    _, head, softcap = lm_parts(lm.model)
    return head_logits(head, softcap, h)


class PrenormTap:
    """Records the input of the decoder's final norm (the pre-norm last state) on each forward,
    when the requested layers include ``prenorm_index``; otherwise does nothing."""

    def __init__(self, decoder: Any, layers: Sequence[int], n_layers: int):
        self.value: torch.Tensor | None = None
        self._handle = None
        if prenorm_index(n_layers) in layers:
            norm = getattr(decoder, "norm", None)
            if norm is None:
                raise HsrmError("layers: 'prenorm' needs a decoder with a final `norm` module")
            self._handle = norm.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.value = args[0]

    def states(self, hidden_states: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The model's hidden states, with the pre-norm state appended when tapped."""
        if self._handle is None:
            return hidden_states
        assert self.value is not None
        return (*hidden_states, self.value)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> PrenormTap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class ForwardOut:
    """One decoder pass. ``last`` (B, S, d) is the final-norm output (what the LM head reads);
    ``hidden`` the hidden states by index (0..n_layers, plus the pre-norm state when tapped), or
    None when no layer was asked for."""

    last: torch.Tensor
    hidden: Sequence[torch.Tensor] | None

    def stack(self, layers: Sequence[int], pos: int | slice | None = None) -> torch.Tensor:
        """States of ``layers`` stacked on dim -2: (B, L, d) at column ``pos`` (int) or
        (B, S', L, d) over a slice (default all columns)."""
        if self.hidden is None:
            raise HsrmError("this forward pass captured no hidden states")
        p = slice(None) if pos is None else pos
        return torch.stack([self.hidden[i][:, p] for i in layers], dim=-2)


def forward(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    layers: Sequence[int] = (),
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
) -> ForwardOut:
    """Run the decoder on ``ids`` (B, S) and return the final states and the hidden states of
    ``layers`` (any index, ``prenorm_index`` included). With a ``cache`` (a transformers
    ``DynamicCache``) the pass extends it; ``mask`` then covers past + current columns."""
    decoder = lm.model.get_decoder()
    want = bool(layers)
    kw: dict[str, Any] = {"use_cache": cache is not None}
    if cache is not None:
        kw.update(cache_kw(decoder, cache))
    if mask is not None:
        kw["attention_mask"] = mask
    if position_ids is not None:
        kw["position_ids"] = position_ids
    with PrenormTap(decoder, layers if want else (), lm.fingerprint.n_layers) as tap:
        out = decoder(input_ids=ids, output_hidden_states=want, **kw)
        hidden = tap.states(out.hidden_states) if want else None
    return ForwardOut(last=out.last_hidden_state, hidden=hidden)


def new_cache(lm: LoadedModel, reserve: int = 0) -> Any:
    """A transformers ``DynamicCache``. ``reserve`` > 0: its full-attention layers keep their keys
    and values in buffers with room for ``reserve`` more positions after the first update (the
    prompt), so each decode step writes one column in place instead of ``torch.cat``-copying the
    whole cache (on a CPU with 128 rows of 134-token prompts that copy was 44% of a decode step)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=lm.model.config)
    if reserve > 0:
        cls = _reserved_layer_class()
        cache.layers = [
            cls(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers
        ]
    return cache


def is_reserved(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a reserved (in-place) layer, which ``cache_join`` needs."""
    return _RESERVED is not None and all(isinstance(x, _RESERVED) for x in cache.layers)


def cache_join(a: Any, b: Any, a_cols: int, b_cols: int, n: int) -> None:
    """Append ``b``'s rows to ``a`` (both ``new_cache(..., reserve=...)`` caches), in place.

    Rows are left-padded: each cache's last ``a_cols``/``b_cols`` positions are kept, right-aligned
    in ``n`` columns (n >= both), the columns before them zero (masked by the caller's attention
    mask; zeros, not garbage, so a masked value never meets a NaN). Used to let new prompts join a
    decode batch (``capture.sample_prompts`` with refill)."""
    for la, lb in zip(a.layers, b.layers):
        if lb._k is None:
            continue
        if la._k is None:  # an empty batch: take b's rows
            la._k, la._v, la._n = lb._k, lb._v, lb._n
            la.is_initialized, la.device = True, lb.device
            la._views()
            continue
        ka, va, kb, vb = la._k, la._v, lb._k, lb._v
        Ra, Rb = ka.shape[0], kb.shape[0]
        cap = n + max(la.reserve, lb.reserve)
        k = ka.new_zeros(Ra + Rb, ka.shape[1], cap, ka.shape[3])
        v = va.new_zeros(Ra + Rb, va.shape[1], cap, va.shape[3])
        k[:Ra, :, n - a_cols : n] = ka[:, :, la._n - a_cols : la._n]
        v[:Ra, :, n - a_cols : n] = va[:, :, la._n - a_cols : la._n]
        k[Ra:, :, n - b_cols : n] = kb[:, :, lb._n - b_cols : lb._n]
        v[Ra:, :, n - b_cols : n] = vb[:, :, lb._n - b_cols : lb._n]
        la._k, la._v, la._n = k, v, n
        la._views()


_RESERVED: Any = None


def _reserved_layer_class() -> Any:
    """``DynamicLayer`` whose keys/values are views into a buffer with spare positions (built
    lazily, so importing hsrm.lm does not import transformers)."""
    global _RESERVED
    if _RESERVED is not None:
        return _RESERVED
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve = reserve
            self._k: torch.Tensor | None = None  # (rows, heads, capacity, head_dim)
            self._v: torch.Tensor | None = None
            self._n = 0  # positions held

        def _alloc(self, k: torch.Tensor, v: torch.Tensor, cap: int) -> None:
            self._k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            self._v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])

        def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
            assert self._k is not None and self._v is not None
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]
            return self.keys, self.values

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            s = key_states.shape[-2]
            if self._k is None or self._n + s > self._k.shape[2]:  # first update, or out of room
                old = (self._k, self._v, self._n)
                self._alloc(key_states, value_states, self._n + s + self.reserve)
                if old[0] is not None:
                    self._k[:, :, : old[2]] = old[0][:, :, : old[2]]  # type: ignore[index]
                    self._v[:, :, : old[2]] = old[1][:, :, : old[2]]  # type: ignore[index]
            self._k[:, :, self._n : self._n + s] = key_states  # type: ignore[index]
            self._v[:, :, self._n : self._n + s] = value_states  # type: ignore[index]
            self._n += s
            return self._views()

        def get_seq_length(self) -> int:
            return self._n

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            self._n = max(0, self._n + tokens_to_remove)
            if self._k is not None:
                self._views()

        def reset(self) -> None:
            self._k = self._v = None
            self._n = 0
            super().reset()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._k is None or self._n == 0:
                return
            # One broadcast copy into the grown buffer: no repeat_interleave temporary.
            k, v = self._k, self._v
            assert v is not None
            B, h, cap, d = k.shape
            self._k = k.new_empty(B * repeats, h, cap, d)
            self._v = v.new_empty(B * repeats, v.shape[1], cap, v.shape[3])
            n = self._n
            self._k.view(B, repeats, h, cap, d)[:, :, :, :n] = k[:, None, :, :n]
            self._v.view(B, repeats, v.shape[1], cap, v.shape[3])[:, :, :, :n] = v[:, None, :, :n]
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self._k is None or self._n == 0:
                return
            assert self._v is not None
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    _RESERVED = ReservedLayer
    return ReservedLayer
