"""Reading generations: the three input formats into ``Request``s (a prompt and its choices), every
line checked before anything is written, and the labels of each choice (``grade_requests``).
Formats, where prompts and labels come from, and token ids: the package docstring
(``hsrm.importing``) and docs/engines.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from hsrm.errors import HsrmError
from hsrm.io import read_jsonl
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
