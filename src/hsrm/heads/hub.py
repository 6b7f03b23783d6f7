"""Heads as Hugging Face Hub artifacts: the folder layout, the model card, download and upload.

A saved head folder is what the Hub expects of a model repository:

* ``config.json``: architecture, format version, hyperparameters, the fingerprint and layers of the
  model the head was fit on (``Head.save``);
* ``model.safetensors``: the learned tensors (folders written before this layout hold
  ``head.safetensors``; both load);
* ``README.md``: the model card (``model_card``): the model fingerprint, the method and its paper,
  the training data and its size (``training.json``), the evaluation table with its controls
  (``evaluation.json``, an ``hsrm evaluate`` / ``prefs evaluate`` / ``detect evaluate``
  ``results.json``), intended use and limits;
* optionally ``training.json`` and ``evaluation.json``.

``Head.from_pretrained(folder_or_repo_id)`` loads a local folder or downloads a repository with
``huggingface_hub.snapshot_download``; ``Head.push_to_hub(repo_id)`` / ``push_folder`` upload one
with ``HfApi.upload_folder``. Both import huggingface_hub lazily (a dependency of transformers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hsrm.errors import HsrmError
from hsrm.io import atomic_write_json, atomic_write_text

WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
TRAINING_FILE = "training.json"
EVALUATION_FILE = "evaluation.json"
HUB_FILES = [
    CONFIG_FILE,
    WEIGHTS_FILE,
    LEGACY_WEIGHTS_FILE,
    CARD_FILE,
    TRAINING_FILE,
    EVALUATION_FILE,
]

# Method, paper, and what the score means, per registered head.
METHODS: dict[str, tuple[str, str]] = {
    "elhsr": (
        "ELHSR / SWIFT: a gated linear reward over every answer token's hidden states",
        "Guo et al., 2025, SWIFT (ELHSR), best-of-N from the LLM's hidden states",
    ),
    "elhsr_logits": (
        "SWIFT's gated linear head over the next-token log-probabilities (logits mode)",
        "Guo et al., 2025, SWIFT (ELHSR), logits-only variant",
    ),
    "elhsr_toplogprobs": (
        "SWIFT's gated linear head over the top-k log-probabilities an API returns",
        "Guo et al., 2025, SWIFT (ELHSR), API variant",
    ),
    "harp": (
        "HARP: an MLP on the reasoning subspace of the last hidden state (hallucination detector)",
        "HARP, arXiv 2509.11536",
    ),
    "sparserm": (
        "SparseRM: a preference reward from the projections on chosen SAE decoder directions",
        "SparseRM, arXiv 2511.07896",
    ),
    "denserm": (
        "DenseRM: SparseRM's MLP on the pooled hidden state itself (SparseRM's dense baseline)",
        "SparseRM, arXiv 2511.07896 (baseline)",
    ),
    "probe": (
        "A linear probe (logistic regression or PCA + LDA) on one layer's mean answer state",
        "the standard linear-probe baseline",
    ),
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def weights_path(folder: Path) -> Path:
    """The folder's tensor file: ``model.safetensors``, else the older ``head.safetensors``."""
    new = folder / WEIGHTS_FILE
    old = folder / LEGACY_WEIGHTS_FILE
    return new if new.exists() or not old.exists() else old


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HsrmError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _evaluation(evaluation: dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if evaluation is None or isinstance(evaluation, dict):
        return evaluation
    p = Path(evaluation)
    if not p.is_file():
        raise HsrmError(f"{p}: no evaluation results file (an hsrm results.json)")
    ev = _read_json(p)
    if not isinstance(ev, dict):
        raise HsrmError(f"{p}: expected a JSON object of evaluation results")
    return ev


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def evaluation_markdown(ev: dict[str, Any]) -> str:
    """Markdown of an hsrm results.json: best-of-N tables for ``evaluate`` / ``demo`` results,
    else a table of its scalar metrics per scorer (``prefs`` / ``detect evaluate``)."""
    if "bon" in ev and "pass_at_k" in ev:
        from hsrm.report.bon import bon_markdown

        try:
            return bon_markdown(ev)
        except (KeyError, TypeError, ValueError):
            pass  # another results layout: fall through to the generic table
    rows: list[list[Any]] = []
    for name, v in ev.items():
        if isinstance(v, dict):
            scal = {k: x for k, x in v.items() if isinstance(x, int | float | str)}
            if scal:
                rows.append([name, ", ".join(f"{k}={_fmt(x)}" for k, x in scal.items())])
        elif isinstance(v, int | float):
            rows.append([name, _fmt(v)])
    if not rows:
        return "(the evaluation file holds no scalar results)\n"
    return _table(["scorer / field", "results"], rows) + "\n"


def model_card(
    config: dict[str, Any],
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> str:
    """The README.md of a head folder (YAML front matter + sections), from its config.json and,
    when given, its training record and evaluation results."""
    arch = str(config.get("architecture", "?"))
    fp = config.get("fingerprint") or {}
    model = str(fp.get("name", "?"))
    method, paper = METHODS.get(arch, (f"hsrm head {arch!r}", "see the hsrm documentation"))
    front = ["---", "library_name: hsrm", "tags:", "- hsrm", "- reward-model", "- hidden-states"]
    front.append(f"- {arch}")
    if "/" in model and not Path(model).is_absolute():
        front.append(f"base_model: {model}")
    front.append("---")
    lines = [*front, "", f"# hsrm `{arch}` head for `{model}`", "", method + ".", ""]
    lines += ["## Method", "", f"- Method: {method}.", f"- Paper: {paper}."]
    params = config.get("params") or {}
    if params:
        lines.append(
            "- Hyperparameters: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in params.items())
        )
    lines += ["", "## Model it reads", ""]
    lines.append(
        _table(
            ["model", "weights revision", "blocks", "hidden size", "vocab", "layers read"],
            [
                [
                    f"`{model}`",
                    f"`{fp.get('revision', '?')}`",
                    fp.get("n_layers", "?"),
                    fp.get("hidden_size", "?"),
                    fp.get("vocab_size", "?"),
                    ", ".join(str(x) for x in config.get("layers", [])),
                ]
            ],
        )
    )
    lines += [
        "",
        "The head refuses features from any other model or weights (the fingerprint above) and "
        "features that lack a layer it reads. Hidden-state index 0 is the embedding output, "
        f"{fp.get('n_layers', 'n_layers')} the last block after the final norm, one more the "
        "last block before it (`prenorm`).",
        "",
        "## Training data",
        "",
    ]
    if training:
        cfg = training.get("config") or {}
        n_prompts = len(training.get("train_prompts") or [])
        rows = [
            ["source", f"`{training.get('run', cfg.get('run', '?'))}`"],
            ["answers (samples)", training.get("n_samples", "?")],
            ["prompts", n_prompts or "?"],
            ["fit time (s)", training.get("seconds", "?")],
        ]
        rows += [[f"config `{k}`", f"`{json.dumps(v)}`"] for k, v in cfg.items() if k != "run"]
        lines.append(_table(["", ""], rows))
    else:
        lines.append("No training record (`training.json`) was saved with this head.")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += [
            "Held-out prompts the head never trained on. The controls are the scorers a reward "
            "model must beat: `random`, `majority` (majority vote), `mean_logprob`, `text_only` "
            "(a bag-of-words classifier on the answer text) and `answer_prior` (how often each "
            "final answer was right in training); a head that does not beat them has learned the "
            "task, not the model's internal signal.",
            "",
            evaluation_markdown(evaluation),
        ]
    else:
        lines.append(
            "No evaluation results were saved with this head; run `hsrm evaluate` and save them "
            "with `save_pretrained(..., evaluation=RESULTS_JSON)`."
        )
    load = repo_id or "PATH_OR_REPO_ID"
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"- Use: rank (best-of-N), filter or reward answers that `{model}` itself generated, "
        "scored from its own hidden states or log-probabilities, captured by hsrm at the layers "
        "above.",
        "- Not for: answers of another model, another revision of the weights, or text the "
        "model did not produce under the same chat template; tasks far from the training data "
        "(the evaluation above is in-distribution unless it says otherwise).",
        "- A score is a ranking signal, not a calibrated probability of correctness.",
        "- Trained on a small number of prompts: check the confidence intervals of the "
        "evaluation before relying on a difference.",
        "",
        "## How to use",
        "",
        "```python",
        "from hsrm.heads import Head",
        f'head = Head.from_pretrained("{load}")',
        "scores = head.score(features)  # hsrm TokenFeatures captured from the model above",
        "```",
        "",
        f"Files: `{CONFIG_FILE}` (hyperparameters, fingerprint, layers), `{WEIGHTS_FILE}` "
        "(safetensors).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    folder: str | Path,
    evaluation: dict[str, Any] | str | Path | None = None,
    repo_id: str | None = None,
) -> Path:
    """(Re)write ``folder/README.md`` from its config.json, training.json and evaluation results
    (``evaluation``, else the folder's evaluation.json). A given ``evaluation`` is also saved as
    ``evaluation.json`` so the card can be regenerated."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise HsrmError(f"{folder}: not a saved head (no {CONFIG_FILE})")
    config = _read_json(cfg_path)
    ev = _evaluation(evaluation)
    if ev is not None:
        atomic_write_json(folder / EVALUATION_FILE, ev)
    elif (folder / EVALUATION_FILE).is_file():
        ev = _evaluation(folder / EVALUATION_FILE)
    tj = folder / TRAINING_FILE
    training = _read_json(tj) if tj.is_file() else None
    atomic_write_text(folder / CARD_FILE, model_card(config, training, ev, repo_id))
    return folder / CARD_FILE


def is_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s))


def resolve(folder_or_repo_id: str | Path, revision: str | None = None, **download: Any) -> Path:
    """A local head folder, or a Hub repository downloaded (only the head's files) to the
    Hugging Face cache."""
    p = Path(folder_or_repo_id)
    if p.exists():
        return p
    s = str(folder_or_repo_id)
    if not is_repo_id(s):
        raise HsrmError(f"{s}: no such head folder, and not a Hub repository id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id=s, revision=revision, allow_patterns=HUB_FILES, **download)
        )
    except Exception as e:  # hub errors: offline, unknown repo, gated, ...
        raise HsrmError(
            f"{s}: cannot download the head from the Hub ({type(e).__name__}: {e})"
        ) from None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload hsrm head",
    evaluation: dict[str, Any] | str | Path | None = None,
) -> str:
    """Upload a saved head folder to ``repo_id`` (created if missing) with a fresh model card;
    returns the commit URL."""
    folder = Path(folder)
    if not is_repo_id(repo_id):
        raise HsrmError(f"{repo_id!r} is not a Hub repository id (owner/name)")
    write_model_card(folder, evaluation, repo_id=repo_id)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        allow_patterns=HUB_FILES,
    )
    return str(getattr(info, "commit_url", info))
