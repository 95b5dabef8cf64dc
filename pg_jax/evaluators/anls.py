"""DocVQA metrics: ANLS, exact match, per-question-type breakdown. Pure Python, no JAX.

ANLS (Average Normalized Levenshtein Similarity), Biten et al., "Scene Text Visual Question
Answering", ICCV 2019 (https://arxiv.org/abs/1905.13648, eq. 1), used by DocVQA (Mathew et al.,
WACV 2021, https://arxiv.org/abs/2007.00398) and its evaluation server
(https://rrc.cvc.uab.es/?ch=17, "Evaluation" tab)::

    NL(a, g)  = levenshtein(a, g) / max(len(a), len(g))
    s(a, g)   = 1 - NL(a, g)  if NL(a, g) < tau  else 0        (tau = 0.5)
    score(q)  = max over the ground-truth answers g of s(a, g)
    ANLS      = mean over questions of score(q)

Two variants of string normalisation (see ``anls``):
  "rrc"         the evaluation server's: ``" ".join(s.strip().lower().split())`` on both strings
                (case- and whitespace-insensitive). The default; report this number.
  "big_vision"  big_vision's ``evaluators/proj/paligemma/transfers/vqa.py`` with
                ``to_lower=True``: lower-case only (whitespace counts), and an empty ground
                truth scores 1 iff the prediction is empty.

Aggregation keeps sufficient statistics (sums and counts), so hosts can add them before the
division (``Totals.add`` / ``Totals.as_array``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

THRESHOLD = 0.5
VARIANTS = ("rrc", "big_vision")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a  # Keep the row over the shorter string.
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalize(s: str, variant: str = "rrc") -> str:
    """The variant's normalisation of a prediction or an answer.

    Args:
      s: a string.
      variant: "rrc" (strip, lower-case, collapse whitespace) or "big_vision" (lower-case).

    Returns:
      The normalised string.
    """
    if variant == "rrc":
        return " ".join(s.strip().lower().split())
    if variant == "big_vision":
        return s.lower()
    raise ValueError(f"unknown ANLS variant {variant!r}; known: {VARIANTS}")


def _similarity(pred: str, gt: str, variant: str, threshold: float) -> float:
    if not gt and not pred:
        return 1.0  # Both empty: NL is 0/0; both variants score a match.
    if not gt:
        # big_vision scores an empty ground truth as pred == "" (handled above); the RRC formula
        # gives NL = len(pred) / len(pred) = 1 -> 0. Same result, kept explicit for clarity.
        return 0.0
    nl = levenshtein(pred, gt) / max(len(pred), len(gt))
    return 1.0 - nl if nl < threshold else 0.0


def anls(
    prediction: str,
    answers: Sequence[str],
    variant: str = "rrc",
    threshold: float = THRESHOLD,
) -> float:
    """ANLS score of one prediction against its accepted answers.

    Args:
      prediction: the model's answer.
      answers: accepted ground-truth answers (at least one).
      variant: "rrc" (official DocVQA normalisation, default) or "big_vision" (lower-case only).
      threshold: tau; a normalised distance at or above it scores 0 (DocVQA: 0.5).

    Returns:
      max over answers of (1 - NL if NL < threshold else 0), a float in [0, 1].

    Examples:
      >>> anls("  The  Total ", ["the total"])
      1.0
      >>> anls("ab", ["abcd"])  # NL = 2/4 = 0.5, not < 0.5
      0.0
    """
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer")
    pred = normalize(prediction, variant)
    return max(_similarity(pred, normalize(gt, variant), variant, threshold) for gt in answers)


def exact_match(prediction: str, answers: Sequence[str], variant: str = "rrc") -> float:
    """1.0 if the normalised prediction equals any normalised answer, else 0.0."""
    pred = normalize(prediction, variant)
    return float(any(pred == normalize(gt, variant) for gt in answers))


@dataclasses.dataclass
class Totals:
    """Sufficient statistics of a set of scored questions.

    Sums and counts, never means, so that hosts (or batches) combine by addition.
    A question with several types counts once in each of its types.
    """

    anls: float = 0.0
    anls_big_vision: float = 0.0
    exact_match: float = 0.0
    count: int = 0
    by_type: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # [anls_sum, n]

    def add(self, prediction: str, answers: Sequence[str], types: Iterable[str] = ()) -> float:
        """Scores one question, adds it, and returns its (RRC) ANLS."""
        score = anls(prediction, answers)
        self.anls += score
        self.anls_big_vision += anls(prediction, answers, variant="big_vision")
        self.exact_match += exact_match(prediction, answers)
        self.count += 1
        for t in types:
            acc = self.by_type.setdefault(t, [0.0, 0])
            acc[0] += score
            acc[1] += 1
        return score

    def as_array(self, types: Sequence[str]) -> np.ndarray:
        """float64[4 + 2 * len(types)]: the statistics in a fixed order, for a cross-host sum."""
        per_type = [v for t in types for v in self.by_type.get(t, (0.0, 0))]
        return np.array(
            [self.anls, self.anls_big_vision, self.exact_match, self.count, *per_type],
            np.float64,
        )

    @classmethod
    def from_array(cls, arr: np.ndarray, types: Sequence[str]) -> Totals:
        """Inverse of ``as_array`` (types with no questions are dropped)."""
        by_type = {t: [float(arr[4 + 2 * i]), int(arr[5 + 2 * i])] for i, t in enumerate(types)}
        return cls(
            anls=float(arr[0]),
            anls_big_vision=float(arr[1]),
            exact_match=float(arr[2]),
            count=int(arr[3]),
            by_type={t: v for t, v in by_type.items() if v[1]},
        )

    def metrics(self) -> dict[str, float]:
        """Means: {"anls", "anls_big_vision", "exact_match", "num", "anls/<type>"...}."""
        if not self.count:
            return {"num": 0}
        out = {
            "anls": self.anls / self.count,
            "anls_big_vision": self.anls_big_vision / self.count,
            "exact_match": self.exact_match / self.count,
            "num": self.count,
        }
        for t, (total, n) in sorted(self.by_type.items()):
            out[f"anls/{t}"] = total / n
        return out


def mean_anls(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], variant: str = "rrc"
) -> float:
    """ANLS over questions: the mean of ``anls(p, a, variant)``.

    Args:
      predictions: one answer per question.
      answers: the accepted answers of each question.
      variant: as in ``anls``.

    Returns:
      The mean score (0.0 for no questions).
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    return sum(anls(p, a, variant) for p, a in zip(predictions, answers)) / len(predictions)
