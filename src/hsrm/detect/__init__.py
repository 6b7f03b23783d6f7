"""Hallucination detection (HARP, arXiv 2509.11536): data, capture, baselines, evaluation, scoring.

Data: answers with known correctness, captured into a sample store (``hsrm.store``):

* any task (``synthetic``, ``gsm8k:PATH``, ...): sampled answers, wrong final answer = hallucination;
* ``truthfulqa:PATH``: the model's own sampled answers, labelled by ROUGE-L against the reference
  answers (rule in ``hsrm.tasks.rouge.label_rouge``; unlabelled answers are counted and dropped);
* ``truthfulqa-refs:PATH``: the correct and incorrect reference answers, teacher-forced.

Scores here are *hallucination* scores (higher = more likely wrong); AUROC is that of detecting
hallucinations, with a percentile bootstrap CI over questions.

The package, in pipeline order: ``data`` (tasks, labelled answers, question split) -> ``capture``
(answers into a store) -> ``baselines`` (perplexity, entropy) -> ``evaluation`` (AUROC table) ->
``commands`` (one config dataclass + one function per ``hsrm detect`` command).
"""

from hsrm.detect.baselines import length_normalised_entropy, perplexity
from hsrm.detect.capture import CaptureConfig, capture
from hsrm.detect.commands import (
    DetectEvalConfig,
    DetectScoreConfig,
    DetectTrainConfig,
    ScoredAnswer,
    evaluate_store,
    score_answers,
    train_detector,
)
from hsrm.detect.data import (
    DetectData,
    load_labelled,
    make_task,
    relabel_truthfulqa,
    select_split,
    split_questions,
)
from hsrm.detect.evaluation import (
    auroc_row,
    evaluate,
    head_hallucination_scores,
    markdown_table,
)
from hsrm.tasks.rouge import (
    DEFAULT_ROUGE_THRESHOLD,
    HALLUCINATION,
    TRUTHFUL,
    label_rouge,
    rouge_l,
    rouge_tokens,
)
from hsrm.tasks.truthfulqa import QA_PRIMER, TruthfulQARefsTask, TruthfulQATask

__all__ = [
    "DEFAULT_ROUGE_THRESHOLD",
    "HALLUCINATION",
    "QA_PRIMER",
    "TRUTHFUL",
    "CaptureConfig",
    "DetectData",
    "DetectEvalConfig",
    "DetectScoreConfig",
    "DetectTrainConfig",
    "ScoredAnswer",
    "TruthfulQARefsTask",
    "TruthfulQATask",
    "auroc_row",
    "capture",
    "evaluate",
    "evaluate_store",
    "head_hallucination_scores",
    "label_rouge",
    "length_normalised_entropy",
    "load_labelled",
    "make_task",
    "markdown_table",
    "perplexity",
    "relabel_truthfulqa",
    "rouge_l",
    "rouge_tokens",
    "score_answers",
    "select_split",
    "split_questions",
    "train_detector",
]
