"""Held-out loss and perplexity on answer tokens: the cheap early check next to ANLS.

Config entry (see `pg_jax.evaluators.common`)::

    config.evals["docvqa/val/pplx"] = dict(
        type="perplexity", every_steps=500,
        data=dict(name="docvqa", path=D, split="val", limit=512),
        pp_fn=config.input.pp, batch_size=16, loss_len=16)

Metrics: ``{prefix}/loss`` (the training loss: ``pg_jax.step.answer_nll`` reduced as the train
step reduces it, per-example mean over answer tokens, then mean over examples) and
``{prefix}/perplexity`` (exp of the token-level mean NLL). The single fixed answer per example
is the pipeline's stateless choice with seed (0, 0), so the numbers are comparable across steps
and runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

# Preprocessed eval sets smaller than this stay in host memory between runs.
_CACHE_BYTES = 512 * 2**20


class Evaluator:
    """Teacher-forced answer loss over one pass of a held-out split."""

    def __init__(self, predict_fns, data, *, tokenizer, workdir: str | None, prefix: str,
                 loss_len: int = 16):
        """Keeps the handed-in inputs.

        Args:
          predict_fns: ``pg_jax.predict_fns.get_all(model)``; "answer_nll" is used.
          data: the split's ``EvalData`` (training preprocessing: ``pp_fn`` as the train pp).
          tokenizer, workdir: unused (nothing is decoded or written).
          prefix: metric name prefix.
          loss_len: answer positions scored per example (as in training).
        """
        del tokenizer, workdir
        self.prefix, self.data, self.loss_len = prefix, data, loss_len
        self._nll = predict_fns["answer_nll"]
        self._cache: list[dict] | None = None

    def _batches(self) -> Iterator[dict]:
        if self._cache is not None:
            yield from self._cache
            return
        kept, size = [], 0
        for b in self.data.batches():
            b = {k: v for k, v in b.items() if v.dtype.kind not in "OSU"}
            size += sum(v.nbytes for v in b.values())
            kept.append(b)
            yield b
        if size < _CACHE_BYTES:
            self._cache = kept

    def run(self, params) -> Iterator[tuple[str, float]]:
        """Yields (f"{prefix}/loss", value) and (f"{prefix}/perplexity", value)."""
        # Sufficient statistics (sums), never means, so hosts/batches combine exactly.
        nll_sum = tok_sum = ex_loss_sum = n = 0.0
        for b in self._batches():
            mask = b["_mask"]
            nll, tok = jax.device_get(self._nll(params, b, loss_len=self.loss_len))
            nll, tok = nll[mask], tok[mask]
            nll_sum += float(nll.sum())
            tok_sum += float(tok.sum())
            ex_loss_sum += float((nll / np.maximum(tok, 1)).sum())
            n += int(mask.sum())
        yield f"{self.prefix}/loss", ex_loss_sum / max(n, 1)
        yield f"{self.prefix}/perplexity", float(np.exp(nll_sum / max(tok_sum, 1)))
