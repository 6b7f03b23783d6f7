"""What a best-of-N run writes: results.json, results.md, bon.png and results.html (with its
per-sample scores and the ELHSR token view) from a store and per-sample scores."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.bon.baselines import prompt_question
from hsrm.bon.report import bon_report
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.store import Store

log = logging.getLogger(__name__)


def store_report(
    store: Store,
    idx: np.ndarray,
    scores: dict[str, np.ndarray],
    n_boot: int,
    seed: int = 0,
    protocol: str = "random",
    votes: Sequence[str] = (),
) -> dict[str, Any]:
    """``bon_report`` of store samples ``idx`` under ``scores`` (one array per scorer, aligned
    with ``idx``), with the store's labels, prompts, extracted answers and families; ``votes``:
    more scorers whose arrays are vote weights (``bon_report``). Samples stopped early
    (``hsrm sample --prune``) count as answers never given (``bon_report``'s ``finished``)."""
    recs = store.records
    return bon_report(
        scores,
        store.labels[idx],
        store.prompt_ids[idx],
        extracted=[recs[i]["extracted"] for i in idx],
        families=np.array([recs[i]["family"] for i in idx]),
        n_boot=n_boot,
        seed=seed,
        protocol=protocol,
        votes=votes,
        finished=np.array([recs[i].get("stop") != "pruned" for i in idx], bool),
    )


def question_split(
    store: Store,
    idx: np.ndarray,
    scores: dict[str, np.ndarray],
    seen: np.ndarray,
    n_boot: int,
    seed: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    """How many test prompts ask a question (its text, whatever the few-shot context) that a
    training prompt asked too, and the report on each part. The synthetic task draws distinct
    questions until its space runs out (arith 800, compare 760), so a store of more prompts, or
    of another task seed, repeats questions, and a head can then be right by remembering a
    question's right answer rather than by reading the model's states: the ``unseen`` report is
    the one that generalises. ``seen``: per sample of ``idx``; ``scores`` aligned with ``idx``;
    ``kw``: ``store_report``'s (``protocol``, ``votes``)."""
    pids = store.prompt_ids[idx]
    out: dict[str, Any] = {
        "seen_prompts": int(len(set(pids[seen]))),
        "prompts": int(len(set(pids))),
    }
    for name, m in (("seen", seen), ("unseen", ~seen)):
        if m.any() and not m.all():
            part = {k: v[m] for k, v in scores.items()}
            out[name] = store_report(store, idx[m], part, n_boot, seed, **kw)
    return out


def write_outputs(out: Path, rep: dict[str, Any], data: Any = None, title: str = "") -> None:
    from hsrm.report.bon import bon_markdown, plot_bon
    from hsrm.report.html import write_bon_html

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", rep)
    atomic_write_text(out / "results.md", bon_markdown(rep))
    plot_bon(rep, out / "bon.png")
    write_bon_html(out / "results.html", rep, data, title=title)


def store_tokenizer(store: Store) -> Any:
    """The tokenizer of the store's model, for showing tokens (None where it cannot be loaded)."""
    name = store.fingerprint.name
    try:
        if name.startswith("tiny-llama-"):
            from hsrm.tokenizers import byte_tokenizer

            return byte_tokenizer()
        from transformers import AutoTokenizer

        from hsrm.models import resolve

        folder, gguf, _ = resolve(name)
        return AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except Exception as e:  # the token view falls back to token ids; the report still gets written
        log.warning("token view: no tokenizer for %s (%s); showing token ids", name, e)
        return None


def html_data(
    store: Store,
    idx: np.ndarray,
    scores: dict[str, np.ndarray],
    elhsr_for: Any = None,
    key: str = "elhsr",
) -> Any:
    """Per-sample scores and labels of samples ``idx`` for the HTML report, plus token-view examples
    picked by ``scores[key]`` and explained by ``elhsr_for(i)`` (the ELHSR head that scored store
    sample i out of sample), when given."""
    from hsrm.report.bon import scorer_head
    from hsrm.report.html import ScoreData, TokenExample, pick_examples, token_strings

    y = store.labels[idx]
    if "majority" in scores:  # bon_report's votes, not the placeholder zeros
        from hsrm.metrics import vote_counts

        ext = [store.records[int(i)]["extracted"] for i in idx]
        scores = {**scores, "majority": vote_counts(ext, store.prompt_ids[idx])}
    # a head's own scores, not its vote's weights (``Head.calibrated``)
    cal = tuple(
        n for n in scores if (h := scorer_head(n))[0] is not None and not h[1] and h[0].calibrated
    )
    data = ScoreData({k: np.asarray(v) for k, v in scores.items()}, y, cal)
    if elhsr_for is None or key not in scores:
        return data
    tok = store_tokenizer(store)
    recs = store.records
    for title, j in pick_examples(scores[key], y, store.prompt_ids[idx]):
        i = int(idx[j])
        head = elhsr_for(i)
        if head is None:
            continue
        ((g, r),) = head.token_contributions(store.features([i]))
        data.examples.append(
            TokenExample(
                title=title,
                prompt=prompt_question(store, recs[i]),
                tokens=token_strings(tok, store.token_ids(i)),
                gate=[float(v) for v in g],
                reward=[float(v) for v in r],
                score=float(scores[key][j]),
                label=int(y[j]),
            )
        )
    return data
