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

Modules: ``readers`` (formats -> ``Request``s, labels), ``forcing`` (``SourceConfig``,
teacher-forced or logged answers), ``store`` (``import_generations``), ``selecting`` (``select``).

Every line is read and checked before anything is written: a bad line raises ``HsrmError`` naming
the file and line and leaves no store behind. The store is written as ``hsrm sample`` writes it
(``StoreWriter`` through the background ``BackgroundWriter``, shard by shard, locked, resumable).
"""

from hsrm.importing.forcing import (
    SourceConfig,
    forced_answers,
    load_source_model,
    logged_answers,
    make_source_task,
    resolve_ids,
    source_model,
)
from hsrm.importing.readers import (
    FORMATS,
    LABELS,
    Choice,
    Request,
    TextPrompt,
    grade_requests,
    read_generations,
)
from hsrm.importing.selecting import SelectConfig, select
from hsrm.importing.store import ImportConfig, import_generations

__all__ = [
    "FORMATS",
    "LABELS",
    "Choice",
    "ImportConfig",
    "Request",
    "SelectConfig",
    "SourceConfig",
    "TextPrompt",
    "forced_answers",
    "grade_requests",
    "import_generations",
    "load_source_model",
    "logged_answers",
    "make_source_task",
    "read_generations",
    "resolve_ids",
    "select",
    "source_model",
]
