"""Named inference functions for evaluators: ``get_all(model)[name](params, batch, **kw)``.

Evaluators are handed these (``pg_jax.evaluators.common.from_config``) and never build their own;
an evaluator config names one (``pred="decode"``, ``pred_kw={"max_decode_len": 32}``), so a new
task adds a function here instead of touching the trainer. Every function takes the params
(a pytree, possibly sharded) and a batch dict of arrays with a leading batch axis;
``fn.prepare(params)`` converts the params once for many calls (decoding's layout).

  "decode"      int32[B, L] generated tokens, eos included, then padding (``pg_jax.decode``).
  "logits"      (float32[B, T-1, V] next-token logits of ``text[:, :-1]``, intermediates): the
                training forward.
  "answer_nll"  (float32[B] summed answer-token NLL, int32[B] answer tokens): the training
                loss's per-example terms (``pg_jax.step.answer_nll``), for perplexity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pg_jax import sharding
from pg_jax import step as step_lib
from pg_jax.decode import decode as _decode_tokens
from pg_jax.decode import decoding_params
from pg_jax.models import paligemma


def place_batch(params: dict, batch: dict) -> tuple[dict, Callable]:
    """Puts this process's rows on the params' mesh, one slice of rows per device.

    When the params live on a mesh with a "data" axis (as the trainer places them), the rows are
    split over that axis like a training batch, so every device decodes its own rows instead of
    all of them repeating the whole batch; with several processes the global batch is the
    processes' rows in order. Otherwise (params on one device, or rows that do not divide
    evenly on one host) the batch is left as it is.

    Args:
      params: model params, possibly sharded.
      batch: this process's rows, numpy arrays with a leading batch axis.

    Returns:
      (batch to pass to the model, ``to_local(out)``: this process's rows of an output, a
      pytree of arrays with a leading batch axis).
    """
    leaf = jax.tree_util.tree_leaves(params)[0]
    mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
    keep = lambda out: out  # noqa: E731
    if mesh is None or "data" not in mesh.shape:
        return batch, keep
    rows = len(next(iter(batch.values())))
    local_shards = mesh.shape["data"] // jax.process_count()
    if rows % max(local_shards, 1):
        if jax.process_count() == 1:
            return batch, keep  # replicated compute: correct, only slower
        raise ValueError(
            f"evaluation batch of {rows} rows per process does not split over {local_shards} "
            "local devices; pick a batch_size that is a multiple of the device count"
        )
    placed = sharding.global_batch(batch, mesh)
    if jax.process_count() == 1:
        return placed, keep
    from jax.experimental import multihost_utils

    spec = jax.sharding.PartitionSpec("data")
    return placed, lambda out: jax.tree.map(
        lambda x: multihost_utils.global_array_to_host_local_array(x, mesh, spec), out
    )


def _decode(params: dict, batch: dict, *, model: paligemma.Model, **kw) -> jax.Array:
    """Generates continuations of ``[bos] prompt "\\n"``; ``kw`` as in ``pg_jax.decode``."""
    keys = ("image", "text", "mask_input", "mask_ar")
    placed, to_local = place_batch(params, {k: batch[k] for k in keys if k in batch})
    return to_local(_decode_tokens(model, params, placed, **kw))


@functools.partial(jax.jit, static_argnames=("model",))
def _logits_jit(params, image, text, mask_ar, mask_input, *, model):
    return model.apply({"params": params}, image, text, mask_ar, mask_input)


def _logits(params: dict, batch: dict, *, model: paligemma.Model):
    """Teacher-forced logits of ``text[:, :-1]`` (targets are ``text[:, 1:]``)."""
    keys = ("image", "text", "mask_ar", "mask_input")
    placed, to_local = place_batch(params, {k: batch[k] for k in keys if k in batch})
    text = jnp.asarray(placed["text"], jnp.int32)
    mask_ar = jnp.asarray(placed["mask_ar"], jnp.int32)
    mask_input = jnp.asarray(placed.get("mask_input", jnp.ones(text.shape)), bool)
    logits, out = _logits_jit(
        params,
        placed["image"],
        text[:, :-1],
        mask_ar[:, :-1],
        mask_input[:, :-1],
        model=model,
    )
    return to_local(logits), to_local(out)


@functools.partial(jax.jit, static_argnames=("model", "loss_len"))
def _answer_nll_jit(params, batch, *, model, loss_len):
    nll, tokens, _ = step_lib.answer_nll(params, batch, model=model, loss_len=loss_len)
    return nll, tokens


def _answer_nll(params: dict, batch: dict, *, model: paligemma.Model, loss_len: int):
    """Per-example answer NLL and token counts, as the train loss computes them."""
    keys = ("image", "text", "mask_ar", "mask_loss", "mask_input")
    placed, to_local = place_batch(params, {k: batch[k] for k in keys})
    return to_local(_answer_nll_jit(params, placed, model=model, loss_len=loss_len))


class PredictFn:
    """``fn(params, batch, **kw)`` bound to a model, with ``prepare(params)`` for many calls."""

    def __init__(self, fn: Callable, model: paligemma.Model, prepare: Callable | None = None):
        self._fn, self._model, self._prepare = fn, model, prepare

    def __call__(self, params, batch, **kw):
        return self._fn(params, batch, model=self._model, **kw)

    def prepare(self, params):
        """The params in the layout this function reads fastest (the same params if any)."""
        return self._prepare(self._model, params) if self._prepare else params


def get_all(model: paligemma.Model) -> dict[str, PredictFn]:
    """All predict functions bound to ``model``.

    Args:
      model: a ``paligemma.Model``.

    Returns:
      {name: fn(params, batch, **kw)}.
    """
    return {
        "decode": PredictFn(_decode, model, prepare=decoding_params),
        "logits": PredictFn(_logits, model),
        "answer_nll": PredictFn(_answer_nll, model),
    }
