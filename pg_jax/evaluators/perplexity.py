"""Held-out loss and perplexity on answer tokens: the cheap early check next to ANLS.

Config entry (see `pg_jax.evaluators.common`)::

    config.evals["docvqa/val/pplx"] = dict(
        type="perplexity", every_steps=500,
        data=dict(name="docvqa_json", path=D, split="val", limit=512),
        res=224, text_len=32, batch_size=16, loss_len=16)

Metrics: ``{prefix}/loss`` (the training loss's definition: per-example mean over answer tokens,
then mean over examples) and ``{prefix}/perplexity`` (exp of the token-level mean NLL).
The single fixed answer per example is the pipeline's stateless choice with seed (0, 0), so the
numbers are comparable across steps and runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from pg_jax import predict_fns
from pg_jax import step as step_lib
from pg_jax.data import core, input_pipeline

# Preprocessed eval sets smaller than this stay in host memory between runs.
_CACHE_BYTES = 512 * 2**20


class Evaluator:
    """Teacher-forced answer loss over one pass of a held-out split."""

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
        loss_len: int = 16,
        prompt: str = "{question}",
    ):
        """Builds the data source and the jitted per-example loss.

        Args:
          model: the PaliGemma model.
          tokenizer: SentencePiece path (None: the project tokenizer).
          workdir: unused (nothing is written).
          prefix: metric name prefix.
          data: ``pg_jax.data.core.get`` spec (name=..., plus its keyword arguments).
          res, text_len, prompt: as in training (`input_pipeline.pp_train`).
          batch_size: eval batch (the last one is padded and masked).
          loss_len: answer positions scored per example (as in training).
        """
        del workdir
        self.prefix = prefix
        self.source = core.get(**dict(data))
        self.pp = input_pipeline.pp_train(res, text_len, prompt, tokenizer)
        self.batch_size = batch_size
        self._cache: list[dict] | None = None

        def per_example(params, batch):
            # The training loss, kept per example so padded rows can be masked out.
            text = batch["text"]
            idx, valid, _ = step_lib.loss_positions(batch["mask_loss"][:, 1:], loss_len)
            logits, _ = model.apply(
                {"params": params},
                batch["image"],
                text[:, :-1],
                batch["mask_ar"][:, :-1],
                input_mask=batch["mask_input"][:, :-1].astype(bool),
                logits_at=idx,
            )
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            tgt = jnp.take_along_axis(text[:, 1:], idx, axis=1)
            nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0] * valid
            return jnp.sum(nll, 1), jnp.sum(valid, 1)

        self._fn = jax.jit(per_example)

    def _batches(self) -> Iterator[dict]:
        if self._cache is not None:
            yield from self._cache
            return
        kept, size = [], 0
        for b in input_pipeline.eval_batches(self.source, self.pp, batch_size=self.batch_size):
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
            # Rows split over the params' devices (and processes), as for decoding.
            placed, to_local = predict_fns.place_batch(
                params, {k: v for k, v in b.items() if k != "_mask"}
            )
            nll, tok = jax.device_get(to_local(self._fn(params, placed)))
            nll, tok = nll[mask], tok[mask]
            nll_sum += float(nll.sum())
            tok_sum += float(tok.sum())
            ex_loss_sum += float((nll / np.maximum(tok, 1)).sum())
            n += int(mask.sum())
        yield f"{self.prefix}/loss", ex_loss_sum / max(n, 1)
        yield f"{self.prefix}/perplexity", float(np.exp(nll_sum / max(tok_sum, 1)))
