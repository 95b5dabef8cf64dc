"""Stop-gap decode check until `pg_jax.evaluators.vqa` (type "vqa") is merged.

Greedy-decodes held-out questions and reports exact match and ANLS, plus, once, the score of an
image-blind baseline that always answers the most common training answer. ANLS follows
REFERENCE.md section 6 (RRC normalisation, threshold 0.5, max over ground truths, mean over
questions).

Metrics: ``{prefix}/anls``, ``{prefix}/exact_match``, ``{prefix}/baseline_anls`` (first run only).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import jax
import numpy as np

from pg_jax.data import core, input_pipeline
from pg_jax.decode import decode as greedy_decode
from pg_jax.pp.tokenizer import Tokenizer


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[len(b)]


def anls(pred: str, answers: list[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction against its ground-truth answers ("" entries ignored)."""
    best, p = 0.0, _norm(pred)
    for a in answers:
        if not a:
            continue
        g = _norm(a)
        nl = _levenshtein(p, g) / max(len(p), len(g), 1)
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


class Evaluator:
    """Greedy decode, exact match and ANLS over one pass of a held-out split."""

    def __init__(
        self,
        model,
        *,
        tokenizer: str | None,
        workdir: str | None,
        prefix: str,
        data: dict,
        res: int,
        text_len: int,
        batch_size: int,
        max_decode_len: int,
        baseline_data: dict | None = None,
        prompt: str = "{question}",
    ):
        """See the module docstring; `baseline_data` is the training source spec."""
        del workdir
        self.model, self.prefix, self.batch_size = model, prefix, batch_size
        self.max_decode_len = max_decode_len
        self.tok = Tokenizer(tokenizer or None)
        self.source = core.get(**dict(data))
        self.pp = input_pipeline.pp_eval(res, text_len, prompt, tokenizer or None)
        self.baseline_data = baseline_data
        self._cache: list[dict] | None = None

    def _batches(self) -> list[dict]:
        if self._cache is None:  # The demo's eval set is small: preprocess it once.
            self._cache = list(
                input_pipeline.eval_batches(self.source, self.pp, batch_size=self.batch_size)
            )
        return self._cache

    def _baseline(self, answers: list[list[str]]) -> tuple[str, float]:
        train = core.get(**dict(self.baseline_data))
        # Reads the readers' selected examples (metadata only, no images).
        counts = collections.Counter(ex.answers[0] for ex in train._selected if ex.answers)
        common = counts.most_common(1)[0][0]
        return common, float(np.mean([anls(common, a) for a in answers]))

    def run(self, params) -> Iterator[tuple[str, float]]:
        """Yields anls, exact_match (and baseline_anls on the first call)."""
        scores, exact, all_answers = [], [], []
        for b in self._batches():
            tokens = jax.device_get(
                greedy_decode(
                    self.model,
                    params,
                    {k: b[k] for k in ("image", "text", "mask_input", "mask_ar")},
                    max_decode_len=self.max_decode_len,
                )
            )
            for i in np.flatnonzero(b["_mask"]):
                pred = self.tok.decode(tokens[i].tolist())
                answers = [a.decode() if isinstance(a, bytes) else str(a) for a in b["answers"][i]]
                answers = [a for a in answers if a]
                scores.append(anls(pred, answers))
                exact.append(float(_norm(pred) in {_norm(a) for a in answers}))
                all_answers.append(answers)
        yield f"{self.prefix}/anls", float(np.mean(scores))
        yield f"{self.prefix}/exact_match", float(np.mean(exact))
        if self.baseline_data is not None:
            common, score = self._baseline(all_answers)
            self.baseline_answer = common
            self.baseline_data = None  # once
            yield f"{self.prefix}/baseline_anls", score
