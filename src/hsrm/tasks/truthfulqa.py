"""TruthfulQA (CSV: Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers, Source).

Answers within a cell are separated by ``; ``. Each question gives correct and incorrect reference
answers: the source of preference pairs and of truthful / untruthful labels. Split by question.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from hsrm.errors import HsrmError
from hsrm.io import read_text

REQUIRED = ("Question", "Correct Answers", "Incorrect Answers")


@dataclass(frozen=True)
class TQAQuestion:
    id: str  # "tqa-<row number>"
    question: str
    category: str
    best: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]


def _split(cell: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in cell.split("; ") if a.strip())


def load_truthfulqa(path: str | Path, limit: int | None = None) -> list[TQAQuestion]:
    """Read the TruthfulQA CSV; a missing column or an empty answer list names the row."""
    path = Path(path)
    if not path.exists():
        raise HsrmError(f"file not found: {path}")
    out = []
    with io.StringIO(read_text(path, "TruthfulQA CSV"), newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise HsrmError(f"{path}: missing column(s) {missing}; have {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            correct, incorrect = _split(row["Correct Answers"]), _split(row["Incorrect Answers"])
            if not row["Question"].strip():
                raise HsrmError(f"{path}:{i}: empty field 'Question'")
            if not correct or not incorrect:
                raise HsrmError(f"{path}:{i}: question has no correct or no incorrect answers")
            out.append(
                TQAQuestion(
                    id=f"tqa-{i:04d}",
                    question=row["Question"].strip(),
                    category=row.get("Category", "") or "",
                    best=(row.get("Best Answer") or correct[0]).strip(),
                    correct=correct,
                    incorrect=incorrect,
                )
            )
            if limit is not None and len(out) >= limit:
                break
    return out
