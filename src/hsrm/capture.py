"""Sampling with capture, and teacher-forced capture.

``sample_prompt`` prefills a prompt once, shares its KV cache across the N samples, and records for
every answer token the hidden states of the chosen layers and its log-probability *during* sampling
(no second forward pass). The state of answer token t is the one computed when t is fed back as
input, exactly where a teacher-forced pass over prompt + answer would put it; the last token needs
one extra decoder step, run without the LM head.

``teacher_force`` computes the same features for given answers (references, preference pairs, RL
completions), evaluating the LM head only on the positions that predict answer tokens.

Hidden-state index 0 is the embedding output and index ``n_layers`` the last block's output after
the final norm (the Hugging Face convention SWIFT uses).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hsrm.errors import HsrmError
from hsrm.models import LoadedModel
from hsrm.tasks.base import Prompt


def prenorm_index(n_layers: int) -> int:
    """Index of the pseudo-layer "last block's output *before* the final norm" (HARP's pre-norm
    option): one past the post-norm last layer, so ``n_layers + 1``."""
    return n_layers + 1


def parse_layers(spec: str | Sequence[int], n_layers: int) -> tuple[int, ...]:
    """``all`` (0..n_layers, embedding output included), ``last``, ``mid``, ``every:K`` (0, K, 2K, ...
    and the last), or a comma list like ``0,8,16``; negative indices count from the end.
    ``prenorm`` (alone or in a list, e.g. ``last,prenorm``) adds the last block's output before the
    final norm, at index ``n_layers + 1``."""
    total = n_layers + 1
    pre = False
    if not isinstance(spec, str) and not all(
        hasattr(i, "__index__") and not isinstance(i, bool) for i in spec
    ):
        raise HsrmError(f"layers: expected integers, got {list(spec)!r}")
    if isinstance(spec, str) and "prenorm" in spec.lower():
        parts = [x for x in spec.lower().split(",") if x.strip() and x.strip() != "prenorm"]
        pre = True
        if not parts:
            return (prenorm_index(n_layers),)
        spec = ",".join(parts) if len(parts) > 1 else parts[0]
    elif not isinstance(spec, str) and prenorm_index(n_layers) in [int(i) for i in spec]:
        pre = True
        spec = [int(i) for i in spec if int(i) != prenorm_index(n_layers)]
    if not isinstance(spec, str):
        idx = [int(i) for i in spec]
    else:
        s = spec.strip().lower()
        if s == "all":
            idx = list(range(total))
        elif s == "last":
            idx = [n_layers]
        elif s == "mid":
            idx = [n_layers // 2]
        elif s.startswith("every:"):
            k_str = s.split(":", 1)[1].strip()
            k = int(k_str) if k_str.lstrip("-").isdigit() else 0
            if k < 1:
                raise HsrmError(f"layers: every:K needs an integer K >= 1, got {spec!r}")
            idx = list(range(0, total, k))
            if idx[-1] != n_layers:
                idx.append(n_layers)
        else:
            try:
                idx = [int(x) for x in s.split(",") if x.strip()]
            except ValueError:
                raise HsrmError(
                    f"layers: cannot parse {spec!r}; use all, last, mid, every:K or 0,4,8"
                ) from None
    out = []
    for i in idx:
        j = i + total if i < 0 else i
        if not 0 <= j < total:
            raise HsrmError(
                f"layers: index {i} out of range for a model with {n_layers} layers (0..{n_layers})"
            )
        if j not in out:
            out.append(j)
    if pre:
        out.append(prenorm_index(n_layers))
    if not out:
        raise HsrmError(f"layers: {spec!r} selects no layer")
    return tuple(out)


class _PrenormTap:
    """Records the input of the decoder's final norm (the pre-norm last state) on each forward,
    when the requested layers include ``prenorm_index``; otherwise does nothing."""

    def __init__(self, decoder, layers: Sequence[int], n_layers: int):
        self.value: torch.Tensor | None = None
        self._handle = None
        if prenorm_index(n_layers) in layers:
            norm = getattr(decoder, "norm", None)
            if norm is None:
                raise HsrmError("layers: 'prenorm' needs a decoder with a final `norm` module")
            self._handle = norm.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
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

    def validate(self) -> None:
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
    hidden: torch.Tensor | None  # (T, L, d), float32 on CPU; None when capture is off
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


def prompt_text(tokenizer, prompt: Prompt) -> str:
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


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompt_generator(seed: int, prompt_id: str, device: torch.device) -> torch.Generator:
    # Seeded per prompt, not per run position, so a resumed run draws the same samples.
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")
    g = torch.Generator(device=device)
    g.manual_seed(h & ((1 << 63) - 1))
    return g


def _lm_parts(model):
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    cfg = getattr(model.config, "text_config", None) or model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return decoder, head, softcap


def _cache_kw(decoder, cache) -> dict:
    # transformers >= 5.2x names the argument `cache`; older releases `past_key_values`.
    import inspect

    params = inspect.signature(decoder.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _logits(head, softcap, h: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, g: torch.Generator
) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=g).squeeze(-1)


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
        "entropy": -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1),
        "self_certainty": -finite.mean(-1) - float(torch.log(torch.tensor(float(V)))),
        "confidence": -logp.topk(min(k, V), dim=-1).values.mean(-1),
    }


def _stack_layers(
    hs: Sequence[torch.Tensor], layers: tuple[int, ...], pos: int | slice
) -> torch.Tensor:
    # hs: (n_layers+1) x (B, S, d) -> (B, L, d) at position pos
    return torch.stack([hs[i][:, pos] for i in layers], dim=1)


@torch.inference_mode()
def sample_prompt(
    lm: LoadedModel,
    prompt: Prompt,
    cfg: SampleConfig,
    layers: tuple[int, ...] | None = None,
    capture: bool = True,
) -> PromptResult:
    """Draw ``cfg.n`` answers to one prompt, capturing per-token states of ``layers``.

    Answer tokens are the generated tokens before the terminating EOS (which is not included).
    """
    model, tok = lm.model, lm.tokenizer
    layers = layers if layers is not None else parse_layers(cfg.layers, lm.fingerprint.n_layers)
    device = lm.device
    decoder = model.get_decoder()
    eos = set(_eos_ids(lm))
    g = _prompt_generator(cfg.seed, prompt.id, device)

    ids = torch.tensor([_encode(tok, prompt_text(tok, prompt))], device=device)
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ckw = _cache_kw(decoder, cache)
    tap = _PrenormTap(decoder, layers if capture else (), lm.fingerprint.n_layers)
    try:
        return _sample_loop(lm, prompt, cfg, layers, capture, ids, cache, ckw, tap, g, eos)
    finally:
        tap.close()


def _sample_loop(
    lm: LoadedModel,
    prompt: Prompt,
    cfg: SampleConfig,
    layers: tuple[int, ...],
    capture: bool,
    ids: torch.Tensor,
    cache: Any,
    ckw: dict,
    tap: _PrenormTap,
    g: torch.Generator,
    eos: set[int],
) -> PromptResult:
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    decoder, head, softcap = _lm_parts(model)
    out = decoder(input_ids=ids, use_cache=True, output_hidden_states=capture, **ckw)
    prompt_hidden = (
        _stack_layers(tap.states(out.hidden_states), layers, -1)[0].float().cpu()
        if capture
        else None
    )
    logits = _logits(head, softcap, out.last_hidden_state[:, -1]).expand(cfg.n, -1)
    cache.batch_repeat_interleave(cfg.n)
    pos = ids.shape[1]

    n = cfg.n
    tokens: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    certs: list[torch.Tensor] = []
    confs: list[torch.Tensor] = []
    tops: list[tuple[torch.Tensor, torch.Tensor]] = []
    states: list[torch.Tensor] = []
    alive = torch.ones(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    eos_t = torch.tensor(sorted(eos), device=device)
    for step in range(cfg.max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)
        nxt = _sample(logits, cfg.temperature, cfg.top_p, g)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
        tokens.append(nxt)
        lps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
        st_ = token_stats(logp)
        ents.append(st_["entropy"])
        certs.append(st_["self_certainty"])
        confs.append(st_["confidence"])
        if cfg.top_logprobs:
            tv, ti = logp.topk(cfg.top_logprobs, dim=-1)
            tops.append((tv.cpu(), ti.cpu()))
        # The terminating EOS is not an answer token: its log-prob is kept apart, and its state
        # is never needed, so a row that stops costs no extra step.
        ended = alive & torch.isin(nxt, eos_t)
        lengths += (alive & ~ended).long()
        alive = alive & ~ended
        last = step == cfg.max_new_tokens - 1
        if not bool(alive.any()) or (last and not capture):
            break
        out = decoder(
            input_ids=nxt[:, None],
            use_cache=True,
            **ckw,
            output_hidden_states=capture,
            position_ids=torch.full((n, 1), pos, device=device),
        )
        pos += 1
        if capture:
            states.append(
                _stack_layers(tap.states(out.hidden_states), layers, -1).to("cpu", torch.float32)
            )
        if last:
            break
        logits = _logits(head, softcap, out.last_hidden_state[:, -1])

    tok_mat = torch.stack(tokens, 1).cpu()  # (n, steps)
    lp_mat, ent_mat = torch.stack(lps, 1).cpu(), torch.stack(ents, 1).cpu()
    cert_mat, conf_mat = torch.stack(certs, 1).cpu(), torch.stack(confs, 1).cpu()
    st = torch.stack(states, 1) if capture and states else None  # (n, steps, L, d)
    answers = []
    for i in range(n):
        t = int(lengths[i])
        tid = tok_mat[i, :t].tolist()
        stopped = t < tok_mat.shape[1] and int(tok_mat[i, t]) in eos
        hidden = None
        if capture:
            hidden = (
                st[i, :t].clone()
                if st is not None
                else torch.zeros(0, len(layers), lm.fingerprint.hidden_size)
            )
        answers.append(
            Answer(
                token_ids=tid,
                text=tok.decode(tid, skip_special_tokens=True),
                hidden=hidden,
                logprobs=lp_mat[i, :t].clone(),
                entropy=ent_mat[i, :t].clone(),
                self_certainty=cert_mat[i, :t].clone(),
                confidence=conf_mat[i, :t].clone(),
                extra={
                    "eos_logprob": float(lp_mat[i, t]) if stopped else None,
                    # (T, k) log-probs and token ids of the k most likely tokens at each step
                    **(
                        {
                            "top_logprobs": torch.stack([v[i] for v, _ in tops[:t]])
                            if t
                            else torch.zeros(0, cfg.top_logprobs),
                            "top_ids": torch.stack([x[i] for _, x in tops[:t]])
                            if t
                            else torch.zeros(0, cfg.top_logprobs, dtype=torch.long),
                        }
                        if cfg.top_logprobs
                        else {}
                    ),
                },
            )
        )
    return PromptResult(prompt=prompt, answers=answers, prompt_hidden=prompt_hidden)


def sample_prompts(
    lm: LoadedModel,
    prompts: Sequence[Prompt],
    cfg: SampleConfig,
    layers: tuple[int, ...] | None = None,
    capture: bool = True,
) -> list[PromptResult]:
    """Draw ``cfg.n`` answers to each of several prompts; one ``PromptResult`` per prompt, in order.

    Each prompt draws from its own seeded stream, so its answers do not depend on which other
    prompts share the call. This is the entry point every caller that samples many prompts uses
    (the store pipeline, the server, the Ray workers).
    """
    return [sample_prompt(lm, p, cfg, layers, capture) for p in prompts]


def _eos_ids(lm: LoadedModel) -> list[int]:
    ids = set()
    tok = lm.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list | tuple):
        ids.update(int(x) for x in gen_eos)
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None:
            ids.add(int(tid))
    if not ids:
        raise HsrmError("the tokenizer has no end-of-sequence token")
    return sorted(ids)


@torch.inference_mode()
def teacher_force(
    lm: LoadedModel,
    prompt: Prompt | str,
    answers: Sequence[str | Sequence[int]],
    layers: tuple[int, ...] | str = "all",
    batch_size: int = 16,
) -> list[Answer]:
    """Features of given answers to one prompt, from one forward pass over prompt + answer.

    ``answers`` are strings (tokenised after the prompt text) or token-id lists. The LM head runs
    only on the positions that predict answer tokens (``logits_to_keep`` in spirit).
    """
    model, tok = lm.model, lm.tokenizer
    if isinstance(layers, str):
        layers = parse_layers(layers, lm.fingerprint.n_layers)
    decoder, head, softcap = _lm_parts(model)
    device = lm.device
    ptext = prompt if isinstance(prompt, str) else prompt_text(tok, prompt)
    p_ids = _encode(tok, ptext)
    eos = set(_eos_ids(lm))
    seqs = []
    for a in answers:
        a_ids = _encode(tok, a) if isinstance(a, str) else list(a)
        if not a_ids:
            raise HsrmError("teacher_force: an answer has no tokens (empty answer)")
        seqs.append(a_ids)
    out_answers: list[Answer] = []
    P = len(p_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for b0 in range(0, len(seqs), batch_size):
        chunk = seqs[b0 : b0 + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), P + T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : P + len(s)] = torch.tensor(p_ids + s)
            mask[i, : P + len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        tap = _PrenormTap(decoder, layers, lm.fingerprint.n_layers)
        try:
            out = decoder(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )
        finally:
            tap.close()
        hidden_states = tap.states(out.hidden_states)
        # Positions P-1 .. P+T-2 predict the answer tokens.
        logits = _logits(head, softcap, out.last_hidden_state[:, P - 1 : P + T - 1])
        logp = torch.log_softmax(logits, -1)
        hs = torch.stack([hidden_states[i][:, P : P + T] for i in layers], dim=2)  # (B, T, L, d)
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
