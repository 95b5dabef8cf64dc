"""Frozen weights stored as int8 with per-output-channel scales (``frozen_dtype="int8"``).

A quantized weight is a `QArray` leaf in the params tree under the weight's own name:
``q`` int8 of the weight's shape and ``scale`` float32 with the weight's input axes reduced to 1
(one scale per output channel, per layer). Layers read it with ``w.astype(compute_dtype)``, as
every weight, which here dequantizes (``q * scale``) inside the jitted step, one layer at a time
under the layer scan: the stored weights take a quarter of float32's memory and half of bf16's,
and no dequantized copy of the whole model ever exists. Only frozen weights are quantized: the
matrices LoRA can adapt (`lora.LAYOUTS`: the LLM's and the image encoder's attention and MLP
weights) and the token embedding (one scale per token: the row a lookup reads, and the output
channel of the tied logits, so the logits are ``(x @ q.T) * scale.T`` with no dequantized table;
it is 0.9 of PaliGemma 2 10B's 10 GB of int8). Norms, biases, position embeddings and trainable
weights keep their dtype.

Decoding and export dequantize (`dequantize_tree`): the decode loop reads plain arrays, and an
exported model is a plain PaliGemma (with the quantization's rounding in its frozen weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import lora

EMBEDDING = "llm/embedder/input_embedding"
QUANTIZABLE = (*lora.LAYOUTS, EMBEDDING)


@jax.tree_util.register_pytree_node_class
class QArray:
    """int8 values ``q`` and float32 per-output-channel ``scale``; ``astype`` dequantizes."""

    def __init__(self, q, scale):
        self.q, self.scale = q, scale

    def tree_flatten(self):
        return (self.q, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)

    @property
    def shape(self):
        return self.q.shape

    @property
    def ndim(self):
        return len(self.q.shape)

    @property
    def dtype(self):
        return jnp.dtype(jnp.int8)

    @property
    def nbytes(self):
        return int(np.prod(self.q.shape)) + 4 * int(np.prod(self.scale.shape))

    def astype(self, dtype):
        return self.q.astype(dtype) * self.scale.astype(dtype)

    def __getitem__(self, index):
        """Rows of a per-row-scaled table (the embedding lookup), still quantized."""
        return QArray(self.q[index], self.scale[index])

    def __repr__(self):
        return f"QArray(int8{list(self.q.shape)}, scale{list(self.scale.shape)})"


def is_quantized(x) -> bool:
    return isinstance(x, QArray)


def _input_axes(key: str, ndim: int) -> tuple[int, ...]:
    if key == EMBEDDING:  # [V, D]: one scale per token
        return (ndim - 1,)
    layout = lora.LAYOUTS[key]
    lead = ndim - len(layout.weight)  # 1: the stacked layer axis
    return tuple(lead + layout.weight.index(c) for c in layout.inputs)


def quantize(key: str, w: jax.Array) -> QArray:
    """Symmetric int8 per output channel: ``scale = max |w| / 127`` over the input axes."""
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=_input_axes(key, w.ndim), keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return QArray(q, scale)


def abstract(key: str, shape: tuple[int, ...]) -> QArray:
    """The ShapeDtypeStructs of ``quantize(key, w)`` for a weight of ``shape``."""
    axes = _input_axes(key, len(shape))
    scale_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
    return QArray(jax.ShapeDtypeStruct(shape, jnp.int8),
                  jax.ShapeDtypeStruct(scale_shape, jnp.float32))


def dequantize_tree(params, dtype):
    """Every QArray leaf of a params tree as a plain ``dtype`` array (a no-op without any)."""
    return jax.tree.map(lambda x: x.astype(dtype) if is_quantized(x) else x, params,
                        is_leaf=is_quantized)


def has_quantized(params) -> bool:
    return any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized))
