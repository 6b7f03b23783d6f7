"""``hsrm import`` and ``hsrm select``: any engine's generations into a store, and best-of-N over them.

A user who already generates with vLLM, SGLang or an OpenAI-compatible API keeps that engine; hsrm
reads what it returned. Three input formats, detected from the first line (``--format``):

* ``chat``: one chat/completions (or completions) response per line, ``n`` choices each -- what
  vLLM's and SGLang's OpenAI servers return and what ``hsrm sample --api-log`` writes;
* ``batch``: OpenAI Batch API output, ``{"custom_id": ..., "response": {"body": <response>}}``;
  the prompts come from the batch's input file (``--requests``, matched by ``custom_id``);
* ``completions``: plain JSONL, ``prompt`` (text) or ``messages``, and ``completion`` (one) or
  ``completions`` (a list); lines of the same prompt are one request.

A request's prompt is, in order: the task's prompt of that id (``--task``; hsrm's own logs name
``metadata.prompt_id``), the line's ``messages`` / ``prompt`` (top level or under ``request``), or
the ``--requests`` line of its ``custom_id``. Labels, per choice: a ``labels`` field (``metadata.
labels``, top-level ``labels``, or a completion line's ``label``), else the task's checker against
the reference answer (the task prompt's, or the line's ``reference`` / ``answer``; without a task
hsrm's default checker: the first number, else the normalised text).

Features: with ``--model`` (a local model, the one that generated) the answers are teacher-forced
(``hsrm.capture.teacher_force``: the prompt runs once and the answers extend its cache), so the store
holds the same hidden states and log-probs ``hsrm sample`` would have captured. Without a model
(a closed API) the store holds the logged top-k log-prob features (``hsrm.features.
toplogprob_features``; layer ``TOPK_LAYER``), which the ``elhsr_toplogprobs`` head reads.

Token ids: a choice's ``token_ids`` (vLLM ``return_token_ids``; hsrm's own log), else tokens spelt
``token_id:N`` (vLLM ``return_tokens_as_token_ids``), else the text tokenised again (which may split
it otherwise than the engine sampled it).

Every line is read and checked before anything is written: a bad line raises ``HsrmError`` naming
the file and line and leaves no store behind. The store is written as ``hsrm sample`` writes it
(``StoreWriter`` through the background ``BackgroundWriter``, shard by shard, locked, resumable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hsrm.capture import Answer, PromptResult, parse_layers, teacher_force
from hsrm.config import field, validate
from hsrm.errors import HsrmError
from hsrm.features import TOPK_LAYER, topk_fingerprint, topk_token_features
from hsrm.io import atomic_write_text, check_out, read_jsonl
from hsrm.tasks.base import Prompt, Task

log = logging.getLogger(__name__)

FORMATS = ("auto", "chat", "batch", "completions")
LABELS = ("auto", "field", "task")


@dataclass(frozen=True)
class TextPrompt(Prompt):
    """A prompt an engine was sent: chat messages, or plain text (``messages`` empty, the text in
    ``prefill``, as ``lm.prompt_text`` renders the completions API's prompts)."""

    @property
    def question(self) -> str:
        return self.messages[-1]["content"] if self.messages else self.prefill


# -- reading ---------------------------------------------------------------------------------------
@dataclass
class Choice:
    """One generated answer of a request."""

    index: int
    text: str
    token_ids: list[int] | None  # None: only the text is known (tokenised again with --model)
    finish_reason: str | None
    label: bool | None  # from a labels field; None: the checker decides
    raw: dict[str, Any] | None  # the response's choice object (its logprobs), None for plain lines


@dataclass
class Request:
    """One prompt and its ``n`` generated choices, as one input line (or several plain lines)."""

    id: str
    where: str  # "file:line" of its (first) line, for messages
    prompt: Prompt | None  # None: the line names no prompt (a logits-only import needs none)
    choices: list[Choice]
    body: dict[str, Any] = dc_field(default_factory=dict)  # the response object (chat, batch)
    model: str = ""


def _detect(row: dict[str, Any], where: str) -> str:
    if "custom_id" in row and ("response" in row or "error" in row):
        return "batch"
    if "choices" in row:
        return "chat"
    if "completion" in row or "completions" in row:
        return "completions"
    raise HsrmError(
        f"{where}: neither a chat/completions response ('choices'), a Batch API output line "
        "('custom_id' + 'response') nor a prompt/completion line ('completion'); see docs/engines.md"
    )


def _as_prompt(pid: str, src: dict[str, Any], where: str, reference: str | None) -> Prompt | None:
    """A Prompt from a line's (or request body's) ``messages`` or ``prompt``; None when neither."""
    from hsrm.scoring import as_messages

    if "messages" in src:
        try:
            msgs = as_messages(src["messages"], "messages")
        except HsrmError as e:
            raise HsrmError(f"{where}: {e}") from None
        return TextPrompt(id=pid, messages=msgs, answer=reference or "", meta={"source": where})
    if "prompt" in src:
        p = src["prompt"]
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]  # the completions API takes a list of prompts; one is one
        if not isinstance(p, str):
            raise HsrmError(f"{where}: 'prompt' must be a string (use 'messages' for a chat)")
        # plain text, as OpenAI's completions API sends it: no chat template (lm.prompt_text)
        return TextPrompt(
            id=pid, messages=(), answer=reference or "", prefill=p, meta={"source": where}
        )
    return None


def _reference(*srcs: Any) -> str | None:
    """The first ``reference`` / ``answer`` of the given objects or their ``metadata`` (where a
    request body can carry it: OpenAI's chat API takes a ``metadata`` object)."""
    for src in srcs:
        if not isinstance(src, dict):
            continue
        for s in (src, src.get("metadata")):
            if not isinstance(s, dict):
                continue
            for key in ("reference", "answer"):
                v = s.get(key)
                if isinstance(v, str | int | float) and not isinstance(v, bool):
                    return str(v)
    return None


def _label(v: Any, where: str) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool) or (isinstance(v, int | float) and v in (0, 1)):
        return bool(v)
    raise HsrmError(f"{where}: a label must be 0, 1, true, false or null, got {v!r}")


def _token_ids(choice: dict[str, Any], where: str) -> list[int] | None:
    ids = choice.get("token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
        ):
            raise HsrmError(f"{where}: token_ids must be a list of non-negative integers")
        return list(ids)
    lp = choice.get("logprobs")
    toks = None
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        toks = [e.get("token") if isinstance(e, dict) else None for e in lp["content"]]
    elif isinstance(lp, dict) and isinstance(lp.get("tokens"), list):  # completions API logprobs
        toks = lp["tokens"]
    if toks and all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
        try:  # vLLM's return_tokens_as_token_ids=true spells each token "token_id:N"
            return [int(str(t).split(":", 1)[1]) for t in toks]
        except ValueError:
            raise HsrmError(f"{where}: a 'token_id:N' token has no integer N") from None
    return None


def _chat_request(
    body: Any,
    where: str,
    pid: str,
    row: dict[str, Any],
    extra_src: dict[str, Any] | None,
    prompts: dict[str, Prompt],
) -> Request:
    if not isinstance(body, dict):
        raise HsrmError(f"{where}: the response is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise HsrmError(f"{where}: no choices (is this a chat.completion response?)")
    meta: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    labels = meta.get("labels", row.get("labels"))
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(choices)):
        raise HsrmError(f"{where}: labels must list one label per choice ({len(choices)})")
    out = []
    for j, c in enumerate(choices):
        loc = f"{where}: choices[{j}]"
        if not isinstance(c, dict):
            raise HsrmError(f"{loc} is not an object")
        if "message" in c:
            msg = c["message"]
            text = msg.get("content") if isinstance(msg, dict) else None
        else:
            text = c.get("text")
        if not isinstance(text, str):
            raise HsrmError(f"{loc} has no text (message.content or text must be a string)")
        out.append(
            Choice(
                index=j,
                text=text,
                token_ids=_token_ids(c, loc),
                finish_reason=c.get("finish_reason"),
                label=_label(labels[j], f"{where}: labels[{j}]") if labels is not None else None,
                raw=c,
            )
        )
    ref = _reference(row, meta, extra_src)
    return Request(
        pid,
        where,
        _prompt_of(pid, where, ref, prompts, row, row.get("request"), extra_src),
        out,
        body,
        str(body.get("model") or "unknown"),
    )


def _prompt_of(
    pid: str, where: str, ref: str | None, prompts: dict[str, Prompt], *srcs: Any
) -> Prompt | None:
    """The prompt a request was sent: the line's own ``messages`` / ``prompt`` (what the engine
    saw, so teacher forcing runs the same tokens), with the task's reference, family and meta
    where the task has a prompt of this id; else the task's prompt (hsrm's own API log names only
    ``metadata.prompt_id``)."""
    own = next(
        (p for s in srcs if isinstance(s, dict) and (p := _as_prompt(pid, s, where, ref))), None
    )
    task = prompts.get(pid)
    if task is None:
        return own
    answer = ref if ref is not None else task.answer
    if own is None:
        return dataclasses.replace(task, answer=answer)
    return dataclasses.replace(own, answer=answer, family=task.family, meta=task.meta)


def _read_requests_file(path: str) -> dict[str, dict[str, Any]]:
    """``custom_id`` -> request body of a Batch API input file (``{"custom_id", "body"}`` lines)."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(path):
        where = f"{path}:{r['_line']}"
        cid, body = r.get("custom_id"), r.get("body")
        if not isinstance(cid, str) or not isinstance(body, dict):
            raise HsrmError(
                f"{where}: a batch input line needs 'custom_id' and 'body' (the request)"
            )
        if cid in out:
            raise HsrmError(f"{where}: custom_id {cid!r} appears twice")
        out[cid] = {**body, **({"reference": r["reference"]} if "reference" in r else {})}
    return out


def read_generations(
    path: str | Path,
    fmt: str = "auto",
    requests: str = "",
    prompts: dict[str, Prompt] | None = None,
) -> tuple[str, list[Request]]:
    """(format, requests) of a generations file; every line checked, the first problem raised as
    ``HsrmError`` naming ``path:line``. ``prompts``: a task's prompts by id (they win over a line's
    own prompt, so a store of hsrm's own API log holds the task's prompts and references)."""
    if fmt not in FORMATS:
        raise HsrmError(f"format: unknown format {fmt!r}; use one of {FORMATS}")
    prompts = prompts or {}
    rows = read_jsonl(path)
    if not rows:
        raise HsrmError(f"{path}: no generations")
    if fmt == "auto":
        fmt = _detect(rows[0], f"{path}:{rows[0]['_line']}")
    reqs_by_id = _read_requests_file(requests) if requests else {}
    out: list[Request] = []
    seen: dict[str, str] = {}
    groups: dict[str, Request] = {}
    for row in rows:
        where = f"{path}:{row['_line']}"
        if _detect(row, where) != fmt:
            raise HsrmError(f"{where}: not a {fmt} line (the file's first line set the format)")
        if fmt == "completions":
            _completion_line(row, where, prompts, groups, out)
            continue
        if fmt == "batch":
            pid = row["custom_id"]
            if not isinstance(pid, str) or not pid:
                raise HsrmError(f"{where}: custom_id must be a non-empty string")
            if row.get("error"):
                raise HsrmError(
                    f"{where}: the batch request failed ({row['error']!r}); drop the line"
                )
            resp = row.get("response")
            if isinstance(resp, dict) and "body" not in resp and "choices" in resp:
                resp = {"body": resp}  # some batch runners write the response unwrapped
            if not isinstance(resp, dict) or not isinstance(resp.get("body"), dict):
                raise HsrmError(f"{where}: no response.body")
            if resp.get("status_code", 200) != 200:
                raise HsrmError(f"{where}: the batch request failed (status {resp['status_code']})")
            if requests and pid not in reqs_by_id:
                raise HsrmError(f"{where}: custom_id {pid!r} is not in {requests}")
            req = _chat_request(resp["body"], where, pid, row, reqs_by_id.get(pid), prompts)
        else:
            meta: dict[str, Any] = row["metadata"] if isinstance(row.get("metadata"), dict) else {}
            pid = meta.get("prompt_id", row.get("prompt_id", row.get("id")))
            if not isinstance(pid, str | int) or isinstance(pid, bool) or pid == "":
                raise HsrmError(f"{where}: no request id (metadata.prompt_id or id)")
            pid = str(pid)
            req = _chat_request(row, where, pid, row, reqs_by_id.get(pid), prompts)
        if req.id in seen:
            raise HsrmError(f"{where}: request id {req.id!r} already came at {seen[req.id]}")
        seen[req.id] = where
        out.append(req)
    return fmt, out


def _completion_line(
    row: dict[str, Any],
    where: str,
    prompts: dict[str, Prompt],
    groups: dict[str, Request],
    out: list[Request],
) -> None:
    """A plain prompt/completion line: a new request, or more choices of an earlier one."""
    if "completion" in row and "completions" in row:
        raise HsrmError(f"{where}: give 'completion' (one) or 'completions' (a list), not both")
    texts = row["completions"] if "completions" in row else [row["completion"]]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise HsrmError(f"{where}: 'completion' must be a string, 'completions' a list of strings")
    if "labels" in row:
        labels = row["labels"]
        if not isinstance(labels, list) or len(labels) != len(texts):
            raise HsrmError(f"{where}: labels must list one label per completion ({len(texts)})")
    else:
        labels = [row.get("label")] * len(texts) if len(texts) == 1 else [None] * len(texts)
    pid_v = row.get("prompt_id", row.get("id"))
    if pid_v is not None and (not isinstance(pid_v, str | int) or isinstance(pid_v, bool)):
        raise HsrmError(f"{where}: 'prompt_id' must be a string")
    ref = _reference(row)
    if pid_v is None:
        if "messages" not in row and "prompt" not in row:
            raise HsrmError(f"{where}: give 'prompt' (text) or 'messages', or a 'prompt_id'")
        key = json.dumps(row.get("messages", row.get("prompt")), sort_keys=True)
        pid = "p" + hashlib.sha256(key.encode()).hexdigest()[:12]
    else:
        pid = str(pid_v)
    prompt = _prompt_of(pid, where, ref, prompts, row)
    if prompt is None:
        raise HsrmError(
            f"{where}: prompt {pid!r} is not a task prompt; give 'prompt' or 'messages'"
        )
    req = groups.get(pid)
    if req is None:
        req = groups[pid] = Request(pid, where, prompt, [])
        out.append(req)
    elif req.prompt is not None and prompt.messages + (prompt.prefill,) != req.prompt.messages + (
        req.prompt.prefill,
    ):
        raise HsrmError(f"{where}: prompt id {pid!r} came at {req.where} with another prompt")
    for j, t in enumerate(texts):
        req.choices.append(
            Choice(
                index=len(req.choices),
                text=t,
                token_ids=None,
                finish_reason=None,
                label=_label(labels[j], f"{where}: label"),
                raw=None,
            )
        )


# -- labels ----------------------------------------------------------------------------------------
def grade_requests(
    reqs: Sequence[Request], task: Task | None, labels: str = "auto"
) -> list[list[tuple[Any, bool]]]:
    """(extracted answer, label) per choice, as ``Task.grade`` gives them: the line's label
    (``labels`` ``auto`` | ``field``) or the task's checker against the prompt's reference (``auto``
    | ``task``). A choice left without a label raises naming its line."""
    if labels not in LABELS:
        raise HsrmError(f"labels: unknown source {labels!r}; use one of {LABELS}")
    checker = task or Task()  # Task(): the first number, else the normalised text
    out = []
    for r in reqs:
        has_ref = r.prompt is not None and r.prompt.answer != ""
        row = []
        for c in r.choices:
            extracted = checker.extract(c.text, r.prompt) if r.prompt is not None else None
            if c.label is not None and labels != "task":
                row.append((extracted, c.label))
            elif has_ref and labels != "field" and r.prompt is not None:
                row.append((extracted, bool(checker.check(extracted, r.prompt))))
            else:
                why = {
                    "field": "no labels field",
                    "task": "no reference answer to check against",
                    "auto": "neither a labels field nor a reference answer",
                }[labels]
                raise HsrmError(
                    f"{r.where}: choices[{c.index}] has {why}; give metadata.labels, a "
                    "'reference' per line, or --task whose prompts these ids name"
                )
        out.append(row)
    return out


# -- import ----------------------------------------------------------------------------------------
@dataclass
class SourceConfig:
    """Where generations come from and how their prompts are found (``import`` and ``select``)."""

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
    n_prompts: int = field(320, "task prompts (synthetic: generated; files: the first N)", min=1)
    families: str = field("arith,compare", "synthetic task families (comma list)")
    task_seed: int = field(0, "seed of the synthetic task generator and of few-shot draws")
    task_range: str = field("1,20", "synthetic operands LO,HI")
    shots: int = field(3, "few-shot examples per prompt (as hsrm sample)", min=0)
    fewshot: str = field("fixed", "few-shot examples: fixed | per_prompt")
    model: str = field(
        "",
        "embedded name, hub id, local folder or .gguf file: teacher-force the answers through "
        "it (empty: the logged top-k log-probs only)",
    )
    dtype: str = field(
        "auto",
        "model dtype: auto (float32 on cpu, bfloat16 on gpus) | float32 | bfloat16 | float16 "
        "(on a cpu with avx512_bf16 or AMX, bfloat16 samples 1.8-2.1x faster than float32)",
    )
    device: str = field("auto", "device: auto | cpu | cuda | cuda:N | mps")
    threads: int = field(0, "torch CPU threads (0 = torch's default)", min=0)
    batch_size: int = field(16, "answers per teacher-forced forward pass", min=1)
    top_logprobs: int = field(
        0,
        "without --model: top-k log-probs per token kept (0 = the fewest any token carries)",
        min=0,
        max=20,
    )


@dataclass
class ImportConfig(SourceConfig):
    out: str = field("runs/import", "output folder of the store (resumes if it exists)")
    labels: str = field(
        "auto", "labels: auto (a labels field, else the checker) | field | task (the checker)"
    )
    layers: str = field("all", "hidden states to keep: all | every:K | mid | last | 0,4,8")
    store_dtype: str = field("float16", "storage dtype: float16 | bfloat16 | int8 | fp8")
    pool: str = field("none", "none (per token) | mean | last (one vector per answer)")
    shard_prompts: int = field(16, "prompts per shard (the unit of resumption)", min=1)
    writer_queue: int = field(
        2, "shards that may wait for the background writer (0 = write synchronously)", min=0
    )


def make_source_task(cfg: SourceConfig) -> Task | None:
    """The task of ``cfg.task`` (built as ``hsrm sample`` builds it), or None."""
    if not cfg.task:
        return None
    from hsrm.sampling import SampleRunConfig, make_task

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


def _load(cfg: SourceConfig) -> Any:
    from hsrm.models import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def resolve_ids(lm: Any, reqs: Sequence[Request]) -> list[list[list[int]]]:
    """Answer token ids per request and choice: the logged ids (checked against the vocabulary),
    else the text tokenised. Every request needs a prompt here (teacher forcing runs it)."""
    from hsrm.lm import encode
    from hsrm.sampling import check_prompt_lengths

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


def logged_answers(reqs: Sequence[Request], k: int) -> tuple[list[list[Answer]], int, Any]:
    """Answers whose "states" are the logged top-k features (T, 1, 2k+3), for a store without a
    model; returns them, k, and the fingerprint those features carry."""
    from hsrm.apilog import MAX_TOP_LOGPROBS, _parse_choice

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
    for row in parsed:
        answers = []
        for s in row:
            T = len(s.tokens)
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
                    token_ids=[],
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


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_generations(cfg: ImportConfig, lm: Any = None, progress: bool = True) -> Any:
    """Read ``cfg.input`` into the store ``cfg.out`` (a normal store: ``hsrm train`` / ``evaluate``
    read it); resumes a killed import. Returns the ``Store``."""
    from hsrm.shardwriter import BackgroundWriter
    from hsrm.store import DTYPES, POOLS, Store, StoreWriter

    validate(cfg, "import")
    if not cfg.input:
        raise HsrmError("import: --input GENERATIONS.jsonl is required")
    # the settings a model load would otherwise wait for are checked first
    if cfg.store_dtype not in DTYPES:
        raise HsrmError(f"store_dtype: unknown {cfg.store_dtype!r}; use one of {DTYPES}")
    if cfg.pool not in POOLS:
        raise HsrmError(f"pool: unknown {cfg.pool!r}; use one of {POOLS}")
    if cfg.labels not in LABELS:
        raise HsrmError(f"labels: unknown source {cfg.labels!r}; use one of {LABELS}")
    check_out(cfg.out, "store")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = make_source_task(cfg)
    prompts = {p.id: p for p in task.prompts()} if task else {}
    fmt, reqs = read_generations(cfg.input, cfg.format, cfg.requests, prompts)
    grades = grade_requests(reqs, task, cfg.labels)
    # what the store's contents depend on (the resume key: the same bytes, read the same way; the
    # files may have moved), then where they came from (recorded, never compared)
    key = {
        "source": "import",
        "format": fmt,
        "input_sha256": _sha256(cfg.input),
        **({"requests_sha256": _sha256(cfg.requests)} if cfg.requests else {}),
        "labels": cfg.labels,
    }
    source = {
        "input": str(cfg.input),
        **({"requests": str(cfg.requests)} if cfg.requests else {}),
        "engine_models": sorted({r.model for r in reqs if r.model}),
    }
    # Everything below the reading is checked before the store is created, so a bad input line or
    # a token the model does not know leaves nothing behind.
    if cfg.model or lm is not None:
        lm = lm if lm is not None else _load(cfg)
        ids = resolve_ids(lm, reqs)
        fp, layers = lm.fingerprint, parse_layers(cfg.layers, lm.fingerprint.n_layers)
        features = "teacher_forced"
        logged = None
    else:
        logged, k, fp = logged_answers(reqs, cfg.top_logprobs)
        layers, features = (TOPK_LAYER,), f"logged_top{k}_logprobs"
    writer = StoreWriter(
        cfg.out,
        {
            "fingerprint": fp.to_dict(),
            "layers": list(layers),
            "task": task.describe() if task else {"name": "import"},
            "sampling": {**key, "features": features},
            "dtype": cfg.store_dtype,
            "model_dtype": cfg.dtype if logged is None else "none",
            "pool": cfg.pool,
            "shard_prompts": cfg.shard_prompts,
        },
    )
    S = cfg.shard_prompts
    shards = [list(range(i, min(i + S, len(reqs)))) for i in range(0, len(reqs), S)]
    todo = [k for k, sh in enumerate(shards) if not writer.shard_done(k, [reqs[i].id for i in sh])]
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of %d shards already done",
            cfg.out,
            len(shards) - len(todo),
            len(shards),
        )
    bar = tqdm(
        total=sum(len(reqs[i].choices) for k in todo for i in shards[k]),
        desc="importing",
        unit="answer",
        disable=not progress,
    )
    bg = BackgroundWriter(writer.write_shard, depth=cfg.writer_queue)
    t0, n_done, n_tok = time.perf_counter(), 0, 0
    try:
        for k in todo:
            results = []
            for i in shards[k]:
                r = reqs[i]
                prompt = r.prompt or TextPrompt(r.id, (), "", meta={"source": r.where})
                if logged is not None:
                    answers = logged[i]
                else:
                    answers = forced_answers(lm, prompt, ids[i], layers, cfg.batch_size)
                for c, a in zip(r.choices, answers):
                    a.text = c.text  # the engine's text, as it returned it
                    a.extra.setdefault("stop", c.finish_reason)
                results.append(PromptResult(prompt=prompt, answers=answers, prompt_hidden=None))
                n_done += len(answers)
                n_tok += sum(int(a.logprobs.shape[0]) for a in answers)
                bar.update(len(answers))
            bg.submit(k, results, [grades[i] for i in shards[k]])
        bg.close()
    except BaseException:
        # the shards written so far stay (complete: false, resumable); the lock is released
        with contextlib.suppress(BaseException):
            bg.close()
        writer.close()
        raise
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    writer.finish(
        {
            "import": {**key, **source, "features": features, "requests": len(reqs)},
            "last_run": {
                "samples": n_done,
                "tokens": n_tok,
                "seconds": dt,
                "writer_wait_s": bg.idle_s,
            },
        }
    )
    store = Store(cfg.out)
    log.info(
        "store %s: %d answers of %d requests imported (%s), %.0f answers/s this run",
        cfg.out,
        len(store),
        len(reqs),
        features,
        n_done / dt if dt > 0 else 0,
    )
    return store


# -- select ----------------------------------------------------------------------------------------
@dataclass
class SelectConfig(SourceConfig):
    head: str = field("", "saved head folder (required)")
    out: str = field("", "output JSONL: per request the chosen choice, its score and rank")


def select(cfg: SelectConfig, lm: Any = None) -> list[dict[str, Any]]:
    """Offline best-of-N: score every choice of every request with a saved head and write, per
    request, the best-scored choice (``score``, ``rank`` 1 of ``n``, every choice's ``scores``)."""
    from hsrm.heads.base import Head

    validate(cfg, "select")
    if not cfg.head:
        raise HsrmError("select: --head HEAD/ is required")
    if not cfg.input:
        raise HsrmError("select: --input GENERATIONS.jsonl is required")
    if not cfg.out:
        raise HsrmError("select: --out PICKED.jsonl is required")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    head = Head.load(cfg.head)
    task = make_source_task(cfg)
    prompts = {p.id: p for p in task.prompts()} if task else {}
    _, reqs = read_generations(cfg.input, cfg.format, cfg.requests, prompts)
    need = tuple(head.required_layers())
    if all(lay == TOPK_LAYER for lay in need):
        # a logits-only head: the features are in the log, no model runs
        # the head's features are 2k+3 wide (topk_token_features)
        k = cfg.top_logprobs or (head.fingerprint_.hidden_size - 3) // 2
        answers, _, fp = logged_answers(reqs, k)
        head.check_compatible(fp, (TOPK_LAYER,))
        scores = [head.score(_features(a, (TOPK_LAYER,), fp)) for a in answers]
    elif any(lay < 0 for lay in need):
        raise HsrmError(
            f"head {cfg.head} reads feature layers {list(need)}, which select cannot build"
        )
    else:
        from hsrm.scoring import check_head_matches

        if not cfg.model and lm is None:
            raise HsrmError(
                f"select: head {cfg.head} reads hidden states; give --model (the model it was fit on)"
            )
        lm = lm if lm is not None else _load(cfg)
        check_head_matches(lm, head, cfg.head)
        ids = resolve_ids(lm, reqs)
        scores = []
        for r, row in zip(reqs, ids):
            assert r.prompt is not None  # resolve_ids refused prompt-less requests
            a = forced_answers(lm, r.prompt, row, need, cfg.batch_size)
            scores.append(head.score(_features(a, need, lm.fingerprint)))
    rows = []
    for r, s in zip(reqs, scores):
        s = np.asarray(s, dtype=np.float64)
        order = np.argsort(-s, kind="stable")  # ties: the first choice wins
        rank = np.empty(len(s), dtype=np.int64)
        rank[order] = np.arange(1, len(s) + 1)
        best = r.choices[int(order[0])]
        rows.append(
            {
                "id": r.id,
                "index": best.index,
                "text": best.text,
                "finish_reason": best.finish_reason,
                "score": float(s[order[0]]),
                "rank": 1,
                "n": len(s),
                "scores": [float(v) for v in s],
                "ranks": [int(v) for v in rank],
                **({"label": best.label} if best.label is not None else {}),
            }
        )
    atomic_write_text(cfg.out, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    return rows


def _features(answers: Sequence[Answer], layers: tuple[int, ...], fp: Any) -> Any:
    from hsrm.features import TokenFeatures

    return TokenFeatures.from_tensors(
        [a.hidden for a in answers if a.hidden is not None],
        layers,
        fp,
        [a.logprobs for a in answers],
    )


__all__ = [
    "FORMATS",
    "Choice",
    "ImportConfig",
    "Request",
    "SelectConfig",
    "SourceConfig",
    "grade_requests",
    "import_generations",
    "read_generations",
    "select",
]
