"""LLM-as-judge with the same model, zero-shot: P("Yes") to "Is this answer correct?".

The judge reads the question and the answer in the model's chat format and the probability of
the next token being "Yes" (summed over the single-token spellings "Yes", " Yes", "yes", " yes")
is the score (the first token of each spelling where a word spans several). ``score_both`` also returns log P(Yes) - log P(No), which ranks by the same answer
to the question but ignores probability mass on other tokens. The LM head runs only on each row's
last position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hsrm.errors import HsrmError
from hsrm.lm import head_logits as _logits
from hsrm.lm import lm_parts as _lm_parts
from hsrm.models import LoadedModel

TEMPLATE = (
    "Question: {question}\nProposed answer: {answer}\nIs this answer correct? Answer Yes or No."
)


class LLMJudge:
    """``LLMJudge(lm).score(questions, answers) -> (n,)`` P("Yes")."""

    def __init__(self, lm: LoadedModel, template: str = TEMPLATE, batch_size: int = 32):
        if "{question}" not in template or "{answer}" not in template:
            raise HsrmError("judge template must contain {question} and {answer}")
        self.lm, self.template, self.batch_size = lm, template, batch_size
        self.yes_ids = self._ids(("Yes", " Yes", "yes", " yes"))
        self.no_ids = self._ids(("No", " No", "no", " no"))
        if not self.yes_ids or not self.no_ids:
            raise HsrmError("judge: the tokenizer cannot encode Yes / No")

    def _ids(self, words: Sequence[str]) -> list[int]:
        # The first token of each spelling (the whole word for BPE vocabularies like SmolLM2's).
        out = []
        for w in words:
            ids = self.lm.tokenizer(w, add_special_tokens=False)["input_ids"]
            if ids and ids[0] not in out:
                out.append(int(ids[0]))
        return out

    def prompt(self, question: str, answer: str) -> str:
        tok = self.lm.tokenizer
        msg = self.template.format(question=question, answer=answer)
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
            )
        return msg + "\n"

    @torch.inference_mode()
    def score_both(
        self, questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(Yes), log P(Yes) - log P(No)) per (question, answer)."""
        if len(questions) != len(answers):
            raise HsrmError(f"judge: {len(questions)} questions but {len(answers)} answers")
        tok = self.lm.tokenizer
        decoder, head, softcap = _lm_parts(self.lm.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        texts = [self.prompt(q, a) for q, a in zip(questions, answers)]
        p_yes, logodds = np.zeros(len(texts)), np.zeros(len(texts))
        dev = self.lm.device
        yes, no = torch.tensor(self.yes_ids, device=dev), torch.tensor(self.no_ids, device=dev)
        for b in range(0, len(texts), self.batch_size):
            enc = [
                tok(t, add_special_tokens=False)["input_ids"]
                for t in texts[b : b + self.batch_size]
            ]
            T = max(len(e) for e in enc)
            ids = torch.full((len(enc), T), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            out = decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            last = torch.tensor([len(e) - 1 for e in enc], device=dev)
            h = out.last_hidden_state[torch.arange(len(enc), device=dev), last]  # (B, d)
            logp = torch.log_softmax(_logits(head, softcap, h), -1)  # (B, vocab)
            ly, ln = torch.logsumexp(logp[:, yes], -1), torch.logsumexp(logp[:, no], -1)
            p_yes[b : b + len(enc)] = ly.exp().cpu().numpy()
            logodds[b : b + len(enc)] = (ly - ln).cpu().numpy()
        return p_yes, logodds

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        return self.score_both(questions, answers)[0]

    def n_parameters(self) -> int:
        """Trainable parameters: none (zero-shot)."""
        return 0
