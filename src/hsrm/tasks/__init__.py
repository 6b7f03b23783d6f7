"""Data sets with answer checkers. ``get_task("synthetic")``, ``get_task("gsm8k:PATH")``,
``get_task("rg:count_bits")`` (reasoning-gym generators, extra ``hsrm[rg]``), ..."""

from __future__ import annotations

import inspect
from typing import Any

from hsrm.errors import HsrmError
from hsrm.tasks.base import Prompt, Task, first_number, last_number, normalize_text
from hsrm.tasks.files import BBHTask, GSM8KTask, JsonlTask
from hsrm.tasks.rg import RGTask
from hsrm.tasks.synthetic import FAMILIES, SyntheticTask
from hsrm.tasks.truthfulqa import TruthfulQARefsTask, TruthfulQATask

TASKS: dict[str, type[Task]] = {
    "synthetic": SyntheticTask,
    "gsm8k": GSM8KTask,
    "bbh": BBHTask,
    "jsonl": JsonlTask,
    "truthfulqa": TruthfulQATask,  # sampled answers labelled by ROUGE-L
    "truthfulqa-refs": TruthfulQARefsTask,  # the reference answers, teacher-forced
    "rg": RGTask,  # reasoning-gym generators: rg:NAME[(key=value,...)][,NAME...]
}


def get_task(spec: str, **kwargs: Any) -> Task:
    """Build a task from ``NAME`` or ``NAME:PATH`` (e.g. ``gsm8k:../shared/data/gsm8k/test.jsonl``)."""
    name, _, path = spec.partition(":")
    if name not in TASKS:
        raise HsrmError(
            f"unknown task {name!r}; known: {', '.join(TASKS)} (file tasks take NAME:PATH)"
        )
    cls = TASKS[name]
    if name == "synthetic":
        if path:
            kwargs.setdefault("families", path)
        return cls(**kwargs)
    if not path:
        what = "generators: rg:NAME[,NAME...]" if name == "rg" else f"a path: {name}:PATH"
        raise HsrmError(f"task {name!r} needs {what}")
    # a file task takes only its own options: the synthetic generator's n and families never,
    # the few-shot seed and shots where it draws exemplars (gsm8k, bbh)
    takes = inspect.signature(cls.__init__).parameters
    return cls(path, **{k: v for k, v in kwargs.items() if k in takes})  # type: ignore[call-arg]


__all__ = [
    "FAMILIES",
    "TASKS",
    "BBHTask",
    "GSM8KTask",
    "JsonlTask",
    "Prompt",
    "RGTask",
    "SyntheticTask",
    "Task",
    "TruthfulQARefsTask",
    "TruthfulQATask",
    "first_number",
    "get_task",
    "last_number",
    "normalize_text",
]
