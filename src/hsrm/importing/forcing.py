"""Where imported answers' features come from: ``SourceConfig`` (the input, its task, the model),
the model they are teacher-forced through (``resolve_ids``, ``forced_answers``), or, without one,
the log's own top-k log-probs (``logged_answers``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from hsrm.apilog import MAX_TOP_LOGPROBS, _parse_choice
from hsrm.capture import Answer, teacher_force
from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.features import topk_fingerprint, topk_token_features
from hsrm.importing.readers import Request
from hsrm.lm import encode
from hsrm.models import ModelConfig, load_model, loaded_config
from hsrm.sampling import (
    FEWSHOT_HELP,
    TASK_DEFAULTS,
    SampleRunConfig,
    check_prompt_lengths,
    make_task,
)
from hsrm.tasks.base import Prompt, Task


@dataclass
class SourceConfig(ModelConfig):
    """Where generations come from and how their prompts are found (``import`` and ``select``).
    The model fields are ``ModelConfig``'s, but ``model`` defaults to none: the log's own top-k
    log-probs, no model run. The task fields default as ``hsrm sample``'s (``TASK_DEFAULTS``), so
    a log ``hsrm sample --api-log`` wrote names the same prompts, few-shot examples included."""

    input: str = field(
        "",
        "generations JSONL: chat/completions responses, Batch API output or "
        "prompt/completion lines (docs/engines.md)",
    )
    format: str = field("auto", "input format: auto | chat | batch | completions")
    requests: str = field(
        "", "batch: the Batch API input file (custom_id + body), where the prompts are"
    )
    task: str = field(
        "",
        "task whose prompts the lines name by id (metadata.prompt_id, custom_id) and whose "
        "checker labels them: synthetic[:FAMILIES] | gsm8k:PATH | bbh:PATH | jsonl:PATH",
    )
    n_prompts: int = field(
        TASK_DEFAULTS["n_prompts"], "task prompts (synthetic: generated; files: the first N)", min=1
    )
    families: str = field(TASK_DEFAULTS["families"], "synthetic task families (comma list)")
    task_seed: int = field(0, "seed of the synthetic task generator and of few-shot draws")
    task_range: str = field("1,20", "synthetic operands LO,HI")
    shots: int = field(3, "few-shot examples per prompt (as hsrm sample)", min=0)
    fewshot: str = field(TASK_DEFAULTS["fewshot"], FEWSHOT_HELP)
    model: str = field(
        "",
        "embedded name, hub id, local folder or .gguf file: teacher-force the answers through "
        "it (empty: the logged top-k log-probs only)",
    )
    batch_size: int = field(16, "answers per teacher-forced forward pass", min=1)
    top_logprobs: int = field(
        0,
        "without --model: top-k log-probs per token kept (0 = the fewest any token carries)",
        min=0,
        max=20,
    )


def make_source_task(cfg: SourceConfig) -> Task | None:
    """The task of ``cfg.task`` (built as ``hsrm sample`` builds it), or None."""
    if not cfg.task:
        return None
    return make_task(
        SampleRunConfig(
            task=cfg.task,
            n_prompts=cfg.n_prompts,
            families=cfg.families,
            task_seed=cfg.task_seed,
            task_range=cfg.task_range,
            shots=cfg.shots,
            fewshot=cfg.fewshot,
        )
    )


def source_model(cfg: SourceConfig, lm: Any = None) -> ModelConfig | None:
    """What the answers are teacher-forced through, ``auto`` settled (``ModelConfig.resolve``)
    before any weights are read, or None without a model (the logged log-probs). ``lm``: a model
    the caller loaded; then its own dtype and device, which ``cfg.dtype`` / ``cfg.device`` other
    than ``auto`` must be."""
    if lm is None:
        return cfg.resolve() if cfg.model else None
    got = loaded_config(lm)
    if cfg.dtype not in ("auto", got.dtype):
        raise HsrmError(
            f"dtype {cfg.dtype!r} asked for, but the model passed in is {got.dtype}; load it in "
            "that dtype, or leave dtype auto"
        )
    if cfg.device != "auto" and cfg.device.split(":", 1)[0] != got.device:
        raise HsrmError(
            f"device {cfg.device!r} asked for, but the model passed in is on {got.device}; move "
            "it there, or leave device auto"
        )
    return replace(got, threads=cfg.threads)


def load_source_model(cfg: SourceConfig, mc: ModelConfig | None, lm: Any = None) -> Any:
    """The model of ``source_model`` (``mc``): loaded with ``load_model``, which applies the
    threads, unless the caller passed it in (``lm``); None without one. Where ``load_model`` does
    not run (a model passed in, no model) the head and the feature code still run on torch, so
    ``cfg.threads`` is applied here."""
    if lm is None and mc is not None:
        return load_model(mc)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return lm


def resolve_ids(lm: Any, reqs: Sequence[Request]) -> list[list[list[int]]]:
    """Answer token ids per request and choice: the logged ids (checked against the vocabulary),
    else the text tokenised. Every request needs a prompt here (teacher forcing runs it)."""
    V = lm.fingerprint.vocab_size
    out = []
    for r in reqs:
        if r.prompt is None:
            raise HsrmError(
                f"{r.where}: no prompt for request {r.id!r} (teacher forcing runs it): give the "
                "line 'messages' or 'prompt', --requests (batch), or --task whose prompts it names"
            )
        row = []
        for c in r.choices:
            if c.token_ids is None:
                row.append(encode(lm.tokenizer, c.text) if c.text else [])
                continue
            bad = [t for t in c.token_ids if t >= V]
            if bad:
                raise HsrmError(
                    f"{r.where}: choices[{c.index}] has token id {bad[0]} outside the vocabulary "
                    f"of {lm.fingerprint.short()} ({V}); was it generated by another model?"
                )
            row.append(list(c.token_ids))
        # a prompt + answer longer than the model's context is refused before any forward pass (a
        # 10 MB line would otherwise try to allocate gigabytes)
        check_prompt_lengths(lm, [r.prompt], max(map(len, row), default=0), r.where)
        out.append(row)
    return out


def forced_answers(
    lm: Any, prompt: Prompt, ids: Sequence[list[int]], layers: tuple[int, ...], batch_size: int
) -> list[Answer]:
    """``teacher_force`` of one prompt's answers; an empty answer gets no tokens (as a sample that
    stopped at once), since teacher forcing needs at least one."""
    L, d = len(layers), lm.fingerprint.hidden_size
    nonempty = [s for s in ids if s]
    got = iter(teacher_force(lm, prompt, nonempty, layers, batch_size) if nonempty else [])
    out = []
    for s in ids:
        if s:
            out.append(next(got))
        else:
            z = torch.zeros(0)
            out.append(Answer([], "", torch.zeros(0, L, d), z, z, self_certainty=z, confidence=z))
    return out


#: the token id a logits-only store records where the log names a token by its text only
UNKNOWN_TOKEN = -1


def logged_answers(reqs: Sequence[Request], k: int) -> tuple[list[list[Answer]], int, Any]:
    """Answers whose "states" are the logged top-k features (T, 1, 2k+3), for a store without a
    model; returns them, k, and the fingerprint those features carry."""
    if k and not 1 <= k <= MAX_TOP_LOGPROBS:
        raise HsrmError(f"top_logprobs must be in 1..{MAX_TOP_LOGPROBS}, got {k}")
    parsed = []
    for r in reqs:
        if not r.body:
            raise HsrmError(
                f"{r.where}: plain completions carry no log-probs; give --model to teacher-force them"
            )
        parsed.append(
            [_parse_choice(c.raw, c.index, r.body, r.where, k or None) for c in r.choices]
        )
    ks = {s.k for row in parsed for s in row if s.tokens}
    if not ks:
        raise HsrmError("every logged answer is empty: no top-k log-probs to import")
    kk = k or min(ks)
    models = {(s.model, s.system_fingerprint) for row in parsed for s in row}
    if len(models) > 1:
        raise HsrmError(f"the log holds several models {sorted(models)}; import one at a time")
    name, rev = next(iter(models))
    out = []
    for r, row in zip(reqs, parsed):
        answers = []
        for c, s in zip(r.choices, row):
            T = len(s.tokens)
            # The store keeps one token id per token: the logged ids where the log has them, else
            # UNKNOWN_TOKEN (a closed API names tokens by their text only, in its own vocabulary).
            ids = c.token_ids if c.token_ids is not None else [UNKNOWN_TOKEN] * T
            if len(ids) != T:
                raise HsrmError(
                    f"{r.where}: choices[{c.index}] has {len(ids)} token_ids but {T} "
                    "logprobs.content entries"
                )
            feats = (
                topk_token_features(s.logprobs, s.top_logprobs[:, :kk])  # (T, 2k+3)
                if T
                else torch.zeros(0, 2 * kk + 3)
            )
            # the entropy of the renormalised top k (the last feature): all a log shows of it
            ent = feats[:, -1].clone()
            nan = torch.full((T,), float("nan"))
            answers.append(
                Answer(
                    token_ids=list(ids),
                    text=s.text,
                    hidden=feats[:, None],  # (T, 1, 2k+3): layer TOPK_LAYER
                    logprobs=s.logprobs.clone(),
                    entropy=ent,
                    self_certainty=nan,
                    confidence=-s.top_logprobs[:, :kk].mean(-1) if T else torch.zeros(0),
                    extra={"stop": s.finish_reason},
                )
            )
        out.append(answers)
    return out, kk, topk_fingerprint(name, rev, kk)
