"""JSONL logs of OpenAI-compatible chat completions with per-token top-k log-probs.

One line is one response object as ``/v1/chat/completions`` returns it with ``logprobs=true,
top_logprobs=k`` (k <= 20)::

    {"id": "...", "object": "chat.completion", "model": "...", "system_fingerprint": "...",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."},
                  "finish_reason": "stop",
                  "logprobs": {"content": [{"token": "7", "logprob": -0.1, "bytes": [55],
                                            "top_logprobs": [{"token": "7", "logprob": -0.1}, ...]},
                                           ...]}}],
     "metadata": {"prompt_id": "...", "labels": [1, 0, ...]}}

``metadata`` is hsrm's addition (APIs ignore it): the prompt id (default: the response ``id``) and
one label per choice (1 = correct), optional. ``read_api_log`` checks every line and names the
line of the first problem; ``write_api_log`` writes hsrm samples drawn with
``SampleConfig(top_logprobs=k)`` in the same format, so heads trained on API logs and on hsrm's own
samples read the same features (``hsrm.features.toplogprob_features``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hsrm.errors import HsrmError
from hsrm.io import atomic_write_text, read_jsonl

MAX_TOP_LOGPROBS = 20  # what OpenAI-compatible APIs allow


@dataclass
class ApiSample:
    """One choice of one logged response. ``top_logprobs`` is (T, k), sorted descending."""

    prompt_id: str
    index: int
    text: str
    tokens: list[str]
    logprobs: torch.Tensor  # (T,) log-prob of each generated token
    top_logprobs: torch.Tensor  # (T, k)
    top_tokens: list[list[str]]
    label: int | None
    model: str
    system_fingerprint: str
    finish_reason: str | None
    where: str  # "file:line" for error messages

    @property
    def k(self) -> int:
        return int(self.top_logprobs.shape[1])


def _num(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(float(x)):
        raise HsrmError(f"{where}: logprob must be a number, got {x!r}")
    return float(x)


def _parse_choice(choice: Any, j: int, resp: dict, where: str, k: int | None) -> ApiSample:
    loc = f"{where}: choices[{j}]"
    if not isinstance(choice, dict):
        raise HsrmError(f"{loc} is not an object")
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("content"), list):
        raise HsrmError(
            f"{loc} has no logprobs.content; request the completion with logprobs=true, top_logprobs=k"
        )
    toks, lps, tops, top_toks = [], [], [], []
    for t, entry in enumerate(lp["content"]):
        eloc = f"{loc}.logprobs.content[{t}]"
        if not isinstance(entry, dict) or "logprob" not in entry:
            raise HsrmError(f"{eloc} has no logprob")
        tl = entry.get("top_logprobs")
        if not tl:
            raise HsrmError(
                f"{eloc} has no top_logprobs; request the completion with logprobs=true, top_logprobs=k (k <= 20)"
            )
        if not isinstance(tl, list) or not all(isinstance(e, dict) and "logprob" in e for e in tl):
            raise HsrmError(f"{eloc}.top_logprobs must be a list of {{token, logprob}} objects")
        if k is not None and len(tl) < k:
            raise HsrmError(f"{eloc} has {len(tl)} top_logprobs; need k={k}")
        vals = sorted((_num(e["logprob"], eloc) for e in tl), reverse=True)
        toks.append(str(entry.get("token", "")))
        lps.append(_num(entry["logprob"], eloc))
        tops.append(vals)
        top_toks.append([str(e.get("token", "")) for e in tl])
    kk = k if k is not None else (min(len(v) for v in tops) if tops else 0)
    top = torch.tensor([v[:kk] for v in tops], dtype=torch.float32) if tops else torch.zeros(0, kk)
    meta = resp.get("metadata") or {}
    labels = meta.get("labels")
    label = None
    if labels is not None:
        if not isinstance(labels, list) or j >= len(labels):
            raise HsrmError(f"{where}: metadata.labels must list one label per choice")
        label = None if labels[j] is None else int(labels[j])
    msg = choice.get("message") or {}
    text = msg.get("content") if isinstance(msg, dict) else None
    return ApiSample(
        prompt_id=str(meta.get("prompt_id", resp.get("id", where))),
        index=int(choice.get("index", j)),
        text=text if isinstance(text, str) else "".join(toks),
        tokens=toks,
        logprobs=torch.tensor(lps, dtype=torch.float32),
        top_logprobs=top,
        top_tokens=top_toks,
        label=label,
        model=str(resp.get("model", "unknown")),
        system_fingerprint=str(resp.get("system_fingerprint") or "api"),
        finish_reason=choice.get("finish_reason"),
        where=f"{where} choices[{j}]",
    )


def read_api_log(path: str | Path, k: int | None = None) -> list[ApiSample]:
    """Every choice of every response in ``path``; ``k`` (default: the fewest any token carries)
    top log-probs per token are kept. A line without ``top_logprobs`` raises naming the line."""
    if k is not None and not 1 <= k <= MAX_TOP_LOGPROBS:
        raise HsrmError(f"top_logprobs k must be in 1..{MAX_TOP_LOGPROBS}, got {k}")
    rows = read_jsonl(path)
    if not rows:
        raise HsrmError(f"{path}: no responses")
    out: list[ApiSample] = []
    for resp in rows:
        where = f"{path}:{resp['_line']}"
        choices = resp.get("choices")
        if not isinstance(choices, list) or not choices:
            raise HsrmError(f"{where}: no choices (is this a chat.completion response?)")
        out.extend(_parse_choice(c, j, resp, where, k) for j, c in enumerate(choices))
    ks = {s.k for s in out if len(s.tokens)}
    if len(ks) > 1:  # cut every sample to the smallest k so that features line up
        kmin = min(ks)
        for s in out:
            s.top_logprobs = s.top_logprobs[:, :kmin]
    return out


def api_log_records(
    results: Sequence[Any],
    tokenizer: Any,
    model_name: str = "hsrm",
    system_fingerprint: str = "",
    labels: Sequence[Sequence[int | None]] | None = None,
) -> list[dict[str, Any]]:
    """One chat.completion response dict per ``hsrm.capture.PromptResult`` (sampled with
    ``top_logprobs=k``), one choice per sample; ``labels[p][i]`` labels sample i of prompt p.
    For writers that append shard by shard (``hsrm sample``)."""
    out = []
    for p, res in enumerate(results):
        choices = []
        for i, a in enumerate(res.answers):
            if "top_logprobs" not in a.extra or "top_ids" not in a.extra:
                raise HsrmError(
                    f"prompt {res.prompt.id!r} sample {i} has no top-k log-probs; sample with "
                    "SampleConfig(top_logprobs=k)"
                )
            tv, ti = a.extra["top_logprobs"], a.extra["top_ids"]  # (T, k)
            content = []
            for t, tid in enumerate(a.token_ids):
                content.append(
                    {
                        "token": tokenizer.decode([tid]),
                        "logprob": float(a.logprobs[t]),
                        "bytes": None,
                        "top_logprobs": [
                            {
                                "token": tokenizer.decode([int(x)]),
                                "logprob": float(v),
                                "bytes": None,
                            }
                            for v, x in zip(tv[t].tolist(), ti[t].tolist())
                        ],
                    }
                )
            why = a.extra.get("stop") or ("eos" if a.extra.get("eos_logprob") is not None else "")
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": a.text},
                    # OpenAI's values: EOS and stop strings are "stop"; a sample stopped early by
                    # --prune is cut like a length stop (and named in metadata.pruned)
                    "finish_reason": "stop" if why in ("eos", "stop") else "length",
                    "logprobs": {"content": content},
                    # the sampled ids, as vLLM returns them with return_token_ids=true: ``hsrm
                    # import`` teacher-forces exactly these (re-tokenising the text may differ)
                    "token_ids": [int(t) for t in a.token_ids],
                }
            )
        meta: dict[str, Any] = {"prompt_id": res.prompt.id, "family": res.prompt.family}
        pruned = [i for i, a in enumerate(res.answers) if a.extra.get("stop") == "pruned"]
        if pruned:
            meta["pruned"] = pruned
        if labels is not None:
            meta["labels"] = [None if v is None else int(v) for v in labels[p]]
        out.append(
            {
                "id": f"hsrm-{res.prompt.id}",
                "object": "chat.completion",
                "model": model_name,
                "system_fingerprint": system_fingerprint,
                "choices": choices,
                "metadata": meta,
            }
        )
    return out


def write_api_log(
    path: str | Path,
    results: Sequence[Any],
    tokenizer: Any,
    model_name: str = "hsrm",
    system_fingerprint: str = "",
    labels: Sequence[Sequence[int | None]] | None = None,
) -> Path:
    """Write ``api_log_records(...)`` as JSONL, atomically."""
    recs = api_log_records(results, tokenizer, model_name, system_fingerprint, labels)
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return path


def write_api_shard(path: Path, results: list, labels: list[list[int]], lm: Any) -> None:
    """One shard's answers as OpenAI-format records (``hsrm sample --api-log``), written atomically."""
    fp = lm.fingerprint
    recs = api_log_records(results, lm.tokenizer, fp.name, fp.revision, labels)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))
