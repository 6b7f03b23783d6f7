"""Deprecated: the best-of-N pipeline was split into ``hsrm.sampling`` (``hsrm sample``) and the
``hsrm.bon`` package (``train``, ``evaluate``, ``demo``, ``baselines``, ``outputs``); its splitters
are in ``hsrm.splits``. The old names stay importable from here for one release."""

import warnings

from hsrm.bon.baselines import baseline_scores, control_scores
from hsrm.bon.demo import DEMO_ELHSR, DemoConfig, cross_fit, demo
from hsrm.bon.evaluate import EvaluateConfig, evaluate
from hsrm.bon.outputs import html_data, store_tokenizer
from hsrm.bon.train import TrainConfig, train
from hsrm.sampling import (
    SamplePlan,
    SampleRunConfig,
    batch_window,
    check_prompt_lengths,
    finish_sample,
    make_task,
    plan_sample,
    sample,
    sample_inputs,
    sample_window,
    save_shard,
)
from hsrm.splits import is_test_prompt, prompt_folds

warnings.warn(
    "hsrm.pipeline is deprecated: import from hsrm.sampling, hsrm.bon.* and hsrm.splits",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DEMO_ELHSR",
    "DemoConfig",
    "EvaluateConfig",
    "SamplePlan",
    "SampleRunConfig",
    "TrainConfig",
    "baseline_scores",
    "batch_window",
    "check_prompt_lengths",
    "control_scores",
    "cross_fit",
    "demo",
    "evaluate",
    "finish_sample",
    "html_data",
    "is_test_prompt",
    "make_task",
    "plan_sample",
    "prompt_folds",
    "sample",
    "sample_inputs",
    "sample_window",
    "save_shard",
    "store_tokenizer",
    "train",
]
