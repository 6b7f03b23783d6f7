"""Teacher-forced capture: the same features as the sampler records, for given answers."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from hsrm import lm as lmx
from hsrm.capture.base import Answer, parse_layers, token_stats
from hsrm.errors import HsrmError
from hsrm.lm import prompt_text
from hsrm.models import LoadedModel
from hsrm.tasks.base import Prompt


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
