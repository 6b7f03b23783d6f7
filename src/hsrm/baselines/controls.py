"""Controls that read no hidden state. A head is worth something only where it beats these.

* ``TextOnlyScorer``: logistic regression on word n-grams (TF-IDF) of the text it is given
  (prompt + answer, or the answer alone), trained on the same samples as the heads.
* ``AnswerPriorScorer``: how often this extracted answer was right in training (smoothed), so a
  head that merely learned "answers like X are right" is matched by a lookup table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hsrm.errors import HsrmError


class TextOnlyScorer:
    """TF-IDF word n-grams -> logistic regression. ``fit(texts, y) -> self``, ``score(texts)``."""

    def __init__(
        self,
        ngram_range: tuple[int, int] = (1, 2),
        C: float = 1.0,
        token_pattern: str = r"(?u)\b\w+\b|[-+<>=]",
    ):
        self.ngram_range = ngram_range
        self.C = C
        self.token_pattern = token_pattern

    def fit(self, texts: Sequence[str], y: np.ndarray) -> TextOnlyScorer:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        if len(texts) != len(y):
            raise HsrmError(f"text-only control: {len(texts)} texts but {len(y)} labels")
        if len(np.unique(y)) < 2:
            raise HsrmError("text-only control: labels hold a single class")
        self.vec_ = TfidfVectorizer(
            ngram_range=self.ngram_range,
            token_pattern=self.token_pattern,
            min_df=1,
            sublinear_tf=True,
        )
        Z = self.vec_.fit_transform(list(texts))
        self.clf_ = LogisticRegression(C=self.C, max_iter=2000).fit(Z, y)
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "clf_"):
            raise HsrmError("text-only control is not fitted")
        return self.clf_.decision_function(self.vec_.transform(list(texts)))


class AnswerPriorScorer:
    """Smoothed rate at which each extracted answer (with its question type) was correct in
    training: (right + a * base) / (seen + a). Unseen answers get the base rate."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, answers: Sequence[object], y: np.ndarray) -> AnswerPriorScorer:
        y = np.asarray(y, float)
        self.base_ = float(y.mean()) if len(y) else 0.0
        stats: dict[object, list[float]] = {}
        for a, lab in zip(answers, y):
            s = stats.setdefault(a, [0.0, 0.0])
            s[0] += lab
            s[1] += 1
        self.table_ = {
            a: (r + self.alpha * self.base_) / (n + self.alpha) for a, (r, n) in stats.items()
        }
        return self

    def score(self, answers: Sequence[object]) -> np.ndarray:
        return np.array([self.table_.get(a, self.base_) for a in answers], float)
