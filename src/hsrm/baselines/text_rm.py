"""A text reward model from the same base model: SWIFT's "fine-tuned reward model" arm.

The base LM's decoder gets a linear score head on its last token
(``AutoModelForSequenceClassification``, weights copied from the loaded LM) and is fine-tuned with
LoRA (PEFT) on the same training samples as the heads, reading question + answer text, with
binary cross-entropy against correct / incorrect. TRL's ``RewardTrainer`` is not used: it trains on
(chosen, rejected) pairs, and best-of-N data here is pointwise labels. Identical training texts are
merged (their mean label is the target), which changes nothing but the time spent.

Defaults keep CPU training short: LoRA r=8, alpha=16 on q/v projections (the PEFT paper's
setting), lr 5e-4, one epoch, batch 8, max 64 tokens. ``lora_layers=K`` trains adapters only on
the top K blocks, so back-propagation stops there (cheaper; the score head is always trained).
``lora_r=0`` fine-tunes every weight instead.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hsrm.errors import HsrmError
from hsrm.models import LoadedModel

log = logging.getLogger(__name__)


def rm_text(question: str, answer: str) -> str:
    """The text the reward model and the judge read for one answer."""
    return f"Question: {question}\nAnswer: {answer}"


class TextRewardModel:
    """``TextRewardModel(lm).fit(texts, labels)``, then ``score(texts) -> (n,)`` logits."""

    def __init__(
        self,
        lm: LoadedModel,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_layers: int | None = None,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
        lr: float = 5e-4,
        epochs: int = 1,
        batch_size: int = 8,
        max_length: int = 64,
        seed: int = 0,
        progress: bool = True,
    ):
        self.lm = lm
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_layers = lora_layers
        self.target_modules = tuple(target_modules)
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.progress = progress

    # -- model ----------------------------------------------------------------------------------
    def _build(self) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        tok = self.lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise HsrmError("text RM: the tokenizer has neither a pad nor an EOS token")
        self.pad_id_ = int(pad)
        cfg = copy.deepcopy(self.lm.model.config)
        cfg.num_labels = 1
        cfg.pad_token_id = self.pad_id_
        torch.manual_seed(self.seed)
        model = AutoModelForSequenceClassification.from_config(cfg)
        base = self.lm.model.get_decoder()
        missing = model.model.load_state_dict(base.state_dict(), strict=False)
        if missing.missing_keys:
            raise HsrmError(
                f"text RM: could not copy base weights; missing {missing.missing_keys[:3]}"
            )
        torch.nn.init.zeros_(model.score.weight)
        model.to(self.lm.device)
        if self.lora_r <= 0:
            return model
        from peft import LoraConfig, get_peft_model

        n_layers = self.lm.fingerprint.n_layers
        lt = None
        if self.lora_layers is not None:
            k = min(max(1, int(self.lora_layers)), n_layers)
            lt = list(range(n_layers - k, n_layers))
        pcfg = LoraConfig(
            task_type="SEQ_CLS",
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            layers_to_transform=lt,
            modules_to_save=["score"],
        )
        return get_peft_model(model, pcfg)

    def _batches(self, texts: Sequence[str], bs: int):
        tok = self.lm.tokenizer
        for b in range(0, len(texts), bs):
            enc = [
                tok(t, add_special_tokens=False)["input_ids"][-self.max_length :]
                for t in texts[b : b + bs]
            ]
            if any(len(e) == 0 for e in enc):
                raise HsrmError(
                    f"text RM: text {b + next(i for i, e in enumerate(enc) if not e)} is empty"
                )
            T = max(len(e) for e in enc)
            ids = torch.full((len(enc), T), self.pad_id_, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            yield b, ids.to(self.lm.device), mask.to(self.lm.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Right padding; the score is read at each row's last real token.
        out = self.model_(input_ids=ids, attention_mask=mask)
        logits = out.logits  # (B, 1) pooled by the model at the last non-pad token
        return logits[:, 0].float()

    # -- the contract ---------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], labels: np.ndarray) -> TextRewardModel:
        y = np.asarray(labels, dtype=np.float64)
        if len(texts) != len(y):
            raise HsrmError(f"text RM: {len(texts)} texts but {len(y)} labels")
        if len(np.unique(y)) < 2:
            raise HsrmError(
                "text RM: labels hold a single class; need correct and incorrect answers"
            )
        merged: dict[str, list[float]] = {}
        for t, v in zip(texts, y):
            merged.setdefault(t, []).append(float(v))
        utexts = list(merged)
        target = torch.tensor([np.mean(merged[t]) for t in utexts], dtype=torch.float32)
        self.model_ = self._build()
        params = [p for p in self.model_.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        rng = np.random.default_rng(self.seed)
        lossf = torch.nn.BCEWithLogitsLoss()
        self.history_ = []
        self.model_.train()
        for epoch in range(self.epochs):
            order = rng.permutation(len(utexts))
            shuffled = [utexts[i] for i in order]
            tot, n = 0.0, 0
            bar = tqdm(
                self._batches(shuffled, self.batch_size),
                total=-(-len(shuffled) // self.batch_size),
                desc=f"text RM epoch {epoch + 1}",
                disable=not self.progress,
                leave=False,
            )
            for b, ids, mask in bar:
                tgt = target[order[b : b + len(ids)]].to(self.lm.device)
                loss = lossf(self._forward(ids, mask), tgt)
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot, n = tot + float(loss.detach()) * len(ids), n + len(ids)
            self.history_.append({"epoch": epoch, "train_loss": tot / max(1, n)})
            log.info(
                "text RM epoch %d: loss %.4f on %d unique texts",
                epoch,
                tot / max(1, n),
                len(utexts),
            )
        self.model_.eval()
        return self

    @torch.inference_mode()
    def score(self, texts: Sequence[str], batch_size: int = 32, dedupe: bool = False) -> np.ndarray:
        """Score logits, one per text. ``dedupe`` scores each distinct text once."""
        if not hasattr(self, "model_"):
            raise HsrmError("text RM is not fitted; call fit() first")
        if len(texts) == 0:
            return np.zeros(0)
        if dedupe:
            uniq = list(dict.fromkeys(texts))
            s = dict(zip(uniq, self.score(uniq, batch_size, dedupe=False)))
            return np.array([s[t] for t in texts])
        out = np.zeros(len(texts))
        for b, ids, mask in self._batches(list(texts), batch_size):
            out[b : b + len(ids)] = self._forward(ids, mask).cpu().numpy()
        return out

    def n_parameters(self) -> int:
        """Trainable parameters (LoRA adapters + score head, or every weight when lora_r=0)."""
        if not hasattr(self, "model_"):
            raise HsrmError("text RM is not fitted; call fit() first")
        return int(sum(p.numel() for p in self.model_.parameters() if p.requires_grad))
