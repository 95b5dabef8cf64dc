"""Named inference functions for evaluators: ``get_all(model)[name](params, batch, **kw)``.

An evaluator config names one (``pred="decode"``, ``pred_kw={"max_decode_len": 32}``), so a new
task adds a function here instead of touching the trainer. Every function takes the params
(a pytree, possibly sharded) and a batch dict of arrays with a leading batch axis.

  "decode"  int32[B, L] generated tokens, eos included, then padding (``pg_jax.decode``).
  "logits"  (float32[B, T-1, V] next-token logits of ``text[:, :-1]``, intermediates): the
            training forward, for perplexity-style evaluators.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pg_jax.decode import decode as _decode_tokens
from pg_jax.models import paligemma


def _decode(params: dict, batch: dict, *, model: paligemma.Model, **kw) -> jax.Array:
    """Generates continuations of ``[bos] prompt "\\n"``; ``kw`` as in ``pg_jax.decode``."""
    keys = ("image", "text", "mask_input", "mask_ar")
    return _decode_tokens(model, params, {k: batch[k] for k in keys if k in batch}, **kw)


@functools.partial(jax.jit, static_argnames=("model",))
def _logits_jit(params, image, text, mask_ar, mask_input, *, model):
    return model.apply({"params": params}, image, text, mask_ar, mask_input)


def _logits(params: dict, batch: dict, *, model: paligemma.Model):
    """Teacher-forced logits of ``text[:, :-1]`` (targets are ``text[:, 1:]``)."""
    text = jnp.asarray(batch["text"], jnp.int32)
    mask_ar = jnp.asarray(batch["mask_ar"], jnp.int32)
    mask_input = jnp.asarray(batch.get("mask_input", jnp.ones(text.shape)), bool)
    return _logits_jit(
        params,
        batch["image"],
        text[:, :-1],
        mask_ar[:, :-1],
        mask_input[:, :-1],
        model=model,
    )


def get_all(model: paligemma.Model) -> dict[str, Callable]:
    """All predict functions bound to ``model``.

    Args:
      model: a ``paligemma.Model``.

    Returns:
      {name: fn(params, batch, **kw)}.
    """
    fns = {"decode": _decode, "logits": _logits}
    return {name: functools.partial(fn, model=model) for name, fn in fns.items()}
