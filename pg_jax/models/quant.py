"""Frozen weights stored in 8 bits with per-output-channel scales (``frozen_dtype="int8"`` or
``"float8"``).

A quantized weight is a `QArray` leaf in the params tree under the weight's own name:
``q`` (int8, or float8 e4m3) of the weight's shape and ``scale`` float32 with the weight's input
axes reduced to 1 (one scale per output channel, per layer). The stored weights take a quarter of
float32's memory and half of bf16's, and no dequantized copy of the whole model ever exists.

Layers multiply activations by weights through `einsum`:

- int8 dequantizes (``q * scale`` in the compute dtype) inside the jitted step, one layer at a
  time under the layer scan, and multiplies in the compute dtype: it saves memory, not time.
- float8 multiplies in FP8 on the matrix units (`fp8_einsum`): the activation is scaled row by
  row (per token) by its own max |x| into e4m3 on every call ("current scaling", no state to
  carry), the product accumulates in float32 inside the GEMM, and both scales are applied to
  its output. Backward, the gradient goes to e5m2 (wider range, as gradients need) for
  ``dx = dy @ q.T``. GPUs with FP8 matrix units (compute capability 8.9+: L4, H100, H200) run
  these products faster than bf16 (BENCHMARKS.md); on the CPU XLA computes the same numbers
  more slowly, and `pg_jax.devices.resolve_dtypes` refuses older GPUs. The frozen GeGLU MLP
  on such a GPU runs as `fp8_mlp`: the same three products, with the GeGLU's scaling, forward
  and backward, in `pg_jax.models.fp8_geglu_kernel` (one read of each row instead of XLA's
  three to four passes).

Only frozen weights are quantized: the matrices LoRA can adapt (`lora.LAYOUTS`: the LLM's and
the image encoder's attention and MLP weights) and the token embedding (one scale per token: the
row a lookup reads, and the output channel of the tied logits, so the logits are
``(x @ q.T) * scale.T`` with no dequantized table; it is 0.9 of PaliGemma 2 10B's 10 GB of
int8). The embedding's products run in the compute dtype in both formats: the train step scores
only the answer positions, so they are small. Norms, biases, position embeddings and trainable
weights keep their dtype.

- Products of a few rows (decode steps), in both formats, multiply the 8-bit values as they
  are and scale the output: they read half of bf16's bytes. One row by a float8 weight on
  an FP8 GPU (a batch-1 step) goes through a Pallas kernel that reads them nearer the
  bandwidth (`pg_jax.models.few_rows_kernel`). float8 multiplies in FP8 only
  from `FP8_MIN_ROWS` rows, where it is faster than bf16; between the two, both formats
  dequantize (`einsum`).

The decode loop reads the 8-bit weights as stored (`pg_jax.decode.decoding_params` dequantizes
only to merge LoRA factors into them). Export dequantizes (`dequantize_tree`): an exported model
is a plain PaliGemma (with the quantization's rounding in its frozen weights).
"""

from __future__ import annotations

import functools
import string

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import attention, few_rows_kernel, fp8_geglu_kernel, lora

EMBEDDING = "llm/embedder/input_embedding"
QUANTIZABLE = (*lora.LAYOUTS, EMBEDDING)
# frozen_dtype -> (storage dtype, largest stored magnitude)
FORMATS = {"int8": (jnp.int8, 127.0), "float8": (jnp.float8_e4m3fn, 448.0)}
_E4M3, _E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
_E5M2_MAX = 57344.0


@jax.tree_util.register_pytree_node_class
class QArray:
    """8-bit values ``q`` and float32 per-output-channel ``scale``; ``astype`` dequantizes."""

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
        return jnp.dtype(self.q.dtype)

    @property
    def nbytes(self):
        return int(np.prod(self.q.shape)) + 4 * int(np.prod(self.scale.shape))

    def astype(self, dtype):
        return self.q.astype(dtype) * self.scale.astype(dtype)

    def __getitem__(self, index):
        """Rows of a per-row-scaled table (the embedding lookup), still quantized."""
        return QArray(self.q[index], self.scale[index])

    def __repr__(self):
        return f"QArray({self.dtype.name}{list(self.q.shape)}, scale{list(self.scale.shape)})"


def is_quantized(x) -> bool:
    return isinstance(x, QArray)


def format_of(x: QArray) -> str:
    """The `FORMATS` name of a QArray's values ("int8" or "float8")."""
    return next(k for k, (dtype, _) in FORMATS.items() if jnp.dtype(dtype) == x.dtype)


def _input_axes(key: str, ndim: int) -> tuple[int, ...]:
    if key == EMBEDDING:  # [V, D]: one scale per token
        return (ndim - 1,)
    layout = lora.LAYOUTS[key]
    lead = ndim - len(layout.weight)  # 1: the stacked layer axis
    return tuple(lead + layout.weight.index(c) for c in layout.inputs)


def quantize(key: str, w: jax.Array, fmt: str = "int8") -> QArray:
    """Symmetric per output channel: ``scale = max |w| / top`` over the input axes, where top is
    the format's largest value (127 for int8, 448 for float8 e4m3)."""
    dtype, top = FORMATS[fmt]
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=_input_axes(key, w.ndim), keepdims=True)
    scale = jnp.where(amax > 0, amax / top, 1.0)
    q = jnp.clip(w / scale, -top, top)
    if fmt == "int8":
        q = jnp.round(q)
    return QArray(q.astype(dtype), scale)


def abstract(key: str, shape: tuple[int, ...], fmt: str = "int8") -> QArray:
    """The ShapeDtypeStructs of ``quantize(key, w, fmt)`` for a weight of ``shape``."""
    axes = _input_axes(key, len(shape))
    scale_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
    return QArray(jax.ShapeDtypeStruct(shape, FORMATS[fmt][0]),
                  jax.ShapeDtypeStruct(scale_shape, jnp.float32))


# Which product a quantized weight takes depends on how many activation rows (tokens) it has.
# Measured on an H200 with the 2048 x 32768 MLP weight (`scripts/bench_fp8_matmul.py` and
# BENCHMARKS.md, "Decoding with 8-bit weights"):
# - Under FEW_ROWS rows (decode steps: one row per example), both formats multiply the 8-bit
#   values as they are and scale the output (`_scaled_after`): the product reads the weight and
#   does little arithmetic, and the values converted inside it are half of bf16's bytes (0.037
#   against bf16's 0.048 ms at 64 rows), where XLA's FP8 GEMM on a scaled activation took
#   0.07-0.5 ms. One row by a float8 weight on a GPU (batch 1) takes `few_rows_kernel`.
# - From FP8_MIN_ROWS rows (the train step's sizes: 8192-9216 rows at 224 px batch 32 and
#   448 px batch 8), float8 runs `fp8_einsum`, which makes those steps 1.09-1.16x faster than
#   bf16. Below that its forward was slower than bf16 (1.01 against 0.74 ms at 4352 rows, a
#   batch-16 prefill; 0.50 against 0.18 ms at 1024).
# - Otherwise the weight is dequantized to the compute dtype (int8 always: scaling int8
#   products' outputs ran the PaliGemma 1 3B train step at 148 against 201 examples/s).
FEW_ROWS = 128
FP8_MIN_ROWS = 8192


def einsum(eqn: str, x: jax.Array, w) -> jax.Array:
    """``jnp.einsum(eqn, x, w)`` in x's dtype, for a plain, int8 or float8 weight ``w``."""
    if not is_quantized(w):
        return jnp.einsum(eqn, x, w.astype(x.dtype))
    eqn = _explicit(eqn, x.ndim)
    rows = _rows(eqn, x.shape)
    if rows < FEW_ROWS:
        return _scaled_after(eqn, x, w, x.dtype)
    if w.q.dtype == _E4M3 and rows >= FP8_MIN_ROWS:
        return fp8_einsum(eqn, x, w.q, w.scale)
    return jnp.einsum(eqn, x, w.astype(x.dtype))


def _rows(eqn: str, x_shape) -> int:
    """How many activation rows the product has: the size of x's axes that are not the
    weight's (the tokens, not the contracted axes or the axes both operands share)."""
    x_labels, w_labels, _ = _parse(eqn)
    return int(np.prod([d for c, d in zip(x_labels, x_shape) if c not in w_labels]))


def _scaled_after(eqn: str, x: jax.Array, w: QArray, dtype) -> jax.Array:
    """``einsum(x, q) * scale`` in ``dtype``: the per-output-channel scale commutes with the
    contraction, so the 8-bit values enter the product as they are (exact in bf16 and float32)
    and no dequantized weight is made; the scale multiplies the float32 output. One row goes
    through `few_rows_kernel` where it applies (`few_rows_kernel.supports`)."""
    _, w_labels, out = _parse(eqn)
    if _rows(eqn, x.shape) == 1 and (y := _one_row_kernel(eqn, x, w)) is not None:
        return y.astype(dtype)
    y = attention.einsum_float32(eqn, x, w.q.astype(x.dtype))
    return (y * _align(w.scale, w_labels, out)).astype(dtype)


def _one_row_plan(eqn: str, w_shape) -> tuple[int, int, int, str] | None:
    """(G, K, N, layout) of ``eqn`` as `few_rows_kernel.matmul` takes it, or None.

    It takes a weight of two axes, the contracted one and the output's last one in either
    order ("kn" or "nk", the embedding), optionally after a leading axis G that x and the
    output lead with too (the MLP's gate|up); x's other axes are the output's (of size 1).
    """
    x_labels, w_labels, out = _parse(eqn)
    g = w_labels[0] if len(w_labels) == 3 else ""
    pair = w_labels[len(g):]
    c, n = x_labels[-1], out[-1]
    if len(pair) != 2 or set(pair) != {c, n} or out != x_labels[:-1] + n:
        return None
    if g and not (x_labels[0] == g and c != g):
        return None
    sizes = dict(zip(w_labels, w_shape))
    return (sizes[g] if g else 1, sizes[c], sizes[n], "kn" if pair == c + n else "nk")


def _one_row_kernel(eqn: str, x: jax.Array, w: QArray) -> jax.Array | None:
    """The one-row product through `few_rows_kernel`, in float32; None where it does not apply
    (`few_rows_kernel.supports`: not a float8 weight it tiles on an FP8 GPU)."""
    plan = _one_row_plan(eqn, w.shape)
    if plan is None or not few_rows_kernel.supports(w.q.dtype, *plan):
        return None
    g, k, n, layout = plan
    y = few_rows_kernel.matmul(x.reshape(g, k), w.q.reshape(g, *w.q.shape[-2:]),
                               w.scale.reshape(g, n), w_layout=layout)
    return y.reshape(*x.shape[:-1], n)


def tied_logits(x: jax.Array, table: QArray) -> jax.Array:
    """``x @ table.T`` in float32 for an embedding table quantized per token (its scale is
    each logit's): the table is never dequantized."""
    return _scaled_after(_explicit("...D,VD->...V", x.ndim), x, table, jnp.float32)


def one_row_kernel_applies(w) -> bool:
    """Whether one row by the matrix ``w[K, N]`` runs through `few_rows_kernel` (callers that
    pad a row to two for XLA's sake need not)."""
    return (is_quantized(w) and w.ndim == 2
            and few_rows_kernel.supports(w.q.dtype, 1, *w.shape))


def _explicit(eqn: str, x_ndim: int) -> str:
    """``eqn`` with x's ``...`` spelled out as letters that the equation does not use."""
    if "..." not in eqn:
        return eqn
    x_labels = eqn.split(",")[0]
    free = [c for c in string.ascii_letters if c not in eqn]
    batch = "".join(free[: x_ndim - (len(x_labels) - 3)])
    return eqn.replace("...", batch)


def _to_fp8(x: jax.Array, labels: str, contracted: str, dtype, top: float):
    """``x`` scaled into an 8-bit float format: (values, float32 scale).

    One scale per row: the max |x| over the axes the product contracts (``contracted``), so
    each token's activation (or gradient) uses the format's whole range. (One scale for the
    whole tensor ran at the same speed on an H200 and drifted more on the tiny models.)
    """
    x = x.astype(jnp.float32)
    axes = tuple(i for i, c in enumerate(labels) if c in contracted)
    amax = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / top, 1.0)
    return jnp.clip(x / scale, -top, top).astype(dtype), scale


def _align(a: jax.Array, labels: str, target: str) -> jax.Array:
    """``a`` (axes named by ``labels``) laid out to broadcast against an array of axes
    ``target``; its axes whose labels are not in target must have size 1."""
    if a.ndim == 0:
        return a
    for label, d in zip(labels, a.shape):
        if label not in target and d != 1:
            raise ValueError(f"scale over {labels!r} varies along {label!r}, absent from {target!r}")
    kept = [label for label in labels if label in target]
    order = sorted(kept, key=target.index)
    a = a.reshape([d for label, d in zip(labels, a.shape) if label in target])
    a = jnp.transpose(a, [kept.index(label) for label in order])
    return a.reshape([a.shape[order.index(c)] if c in order else 1 for c in target])


def _parse(eqn: str) -> tuple[str, str, str]:
    inputs, out = eqn.split("->")
    x_labels, w_labels = inputs.split(",")
    return x_labels, w_labels, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fp8_einsum(eqn: str, x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
    """``einsum(eqn, x, q * scale)`` with both operands in FP8 and float32 accumulation.

    Args:
      eqn: an einsum equation with no ``...`` (see `_explicit`) of activation by weight.
      x: the activation, in the compute dtype; scaled into e4m3 on every call (`_to_fp8`).
      q: the frozen weight in e4m3; no gradient flows to it.
      scale: its float32 per-output-channel scale (`quantize`).
    """
    return _fp8_forward(eqn, x, q, scale)[0]


def _fp8_forward(eqn, x, q, scale):
    x_labels, w_labels, out = _parse(eqn)
    contracted = "".join(c for c in x_labels if c not in out)
    xq, sx = _to_fp8(x, x_labels, contracted, _E4M3, FORMATS["float8"][1])
    y = jnp.einsum(eqn, xq, q, preferred_element_type=x.dtype)
    y = y.astype(jnp.float32) * _align(sx, x_labels, out) * _align(scale, w_labels, out)
    return y.astype(x.dtype), (q, scale)


def _fp8_backward(eqn, residuals, g):
    q, scale = residuals
    x_labels, w_labels, out = _parse(eqn)
    dtype = g.dtype
    # d/dx of (sx * s) * ((x / sx) @ q) is (g * s) @ q.T: the activation's scale cancels.
    g = g.astype(jnp.float32) * _align(scale, w_labels, out)
    contracted = "".join(c for c in out if c not in x_labels)
    gq, sg = _to_fp8(g, out, contracted, _E5M2, _E5M2_MAX)
    dx = jnp.einsum(f"{out},{w_labels}->{x_labels}", gq, q, preferred_element_type=dtype)
    dx = dx.astype(jnp.float32) * _align(sg, out, x_labels)
    return dx.astype(dtype), jnp.zeros_like(q), jnp.zeros_like(scale)


fp8_einsum.defvjp(_fp8_forward, _fp8_backward)


def fp8_mlp_applies(x: jax.Array, gating, linear) -> bool:
    """Whether `fp8_mlp` computes the GeGLU MLP of activation ``x`` by these weights here: both
    float8, enough rows for `fp8_einsum` (`FP8_MIN_ROWS`), and the kernels' GPU
    (`fp8_geglu_kernel.supports`)."""
    return (all(is_quantized(w) and w.q.dtype == _E4M3 for w in (gating, linear))
            and int(np.prod(x.shape[:-1])) >= FP8_MIN_ROWS
            and fp8_geglu_kernel.supports(linear.shape[0]))


def fp8_mlp(x: jax.Array, gating: QArray, linear: QArray) -> jax.Array:
    """The frozen GeGLU MLP ``(gelu_tanh(x @ gating[0]) * (x @ gating[1])) @ linear`` with its
    three products in FP8, as three `fp8_einsum` calls would compute it, and the GeGLU's
    scaling, forward and backward, in `fp8_geglu_kernel` instead of XLA's passes.

    Args:
      x: [..., D] the activation, in the compute dtype.
      gating: float8 [2, D, F] (gate, up), scales [2, 1, F].
      linear: float8 [F, D], scales [1, D].
    """
    lead = x.shape[:-1]
    gate_w, up_w = gating[0], gating[1]
    y = _fp8_mlp(x.reshape(-1, x.shape[-1]), gate_w.q, gate_w.scale, up_w.q, up_w.scale,
                 linear.q, linear.scale)
    return y.reshape(*lead, y.shape[-1])


def _scaled_fp8_product(eqn, a, a_scale, q, q_scale, dtype):
    """``einsum(eqn, a, q)`` of 8-bit operands, accumulated in float32, times the row scales
    ``a_scale`` [R] and the channel scales ``q_scale`` (broadcast to the output), in dtype."""
    y = jnp.einsum(eqn, a, q, preferred_element_type=dtype).astype(jnp.float32)
    return (y * a_scale.reshape(-1, 1) * q_scale).astype(dtype)


@jax.custom_vjp
def _fp8_mlp(x, gate_q, gate_s, up_q, up_s, linear_q, linear_s):
    return _fp8_mlp_forward(x, gate_q, gate_s, up_q, up_s, linear_q, linear_s)[0]


def _fp8_mlp_forward(x, gate_q, gate_s, up_q, up_s, linear_q, linear_s):
    dtype = x.dtype
    xq, sx = _to_fp8(x, "RD", "D", _E4M3, FORMATS["float8"][1])
    # The gate and up products' scales are applied inside the kernels, not in a pass here.
    gate, up = (jnp.einsum("RD,DF->RF", xq, q, preferred_element_type=dtype)
                for q in (gate_q, up_q))
    hq, sh = fp8_geglu_kernel.forward(gate, up, sx, gate_s, up_s)
    y = _scaled_fp8_product("RF,FD->RD", hq, sh, linear_q, linear_s, dtype)
    return y, (gate, up, sx, gate_q, gate_s, up_q, up_s, linear_q, linear_s)


def _fp8_mlp_backward(residuals, g):
    gate, up, sx, gate_q, gate_s, up_q, up_s, linear_q, linear_s = residuals
    dtype = g.dtype
    # As `_fp8_backward`: the gradient times the weight's channel scales, per row into e5m2.
    gq, sg = _to_fp8(g.astype(jnp.float32) * linear_s, "RD", "D", _E5M2, _E5M2_MAX)
    dh = jnp.einsum("RD,FD->RF", gq, linear_q, preferred_element_type=dtype)
    d_gate, s_gate, d_up, s_up = fp8_geglu_kernel.backward(gate, up, dh, sx, sg, gate_s, up_s)
    dx = sum(_scaled_fp8_product("RF,DF->RD", d, s, q, 1.0, dtype).astype(jnp.float32)
             for d, s, q in ((d_gate, s_gate, gate_q), (d_up, s_up, up_q)))
    zeros = [jnp.zeros_like(a) for a in (gate_q, gate_s, up_q, up_s, linear_q, linear_s)]
    return (dx.astype(dtype), *zeros)


_fp8_mlp.defvjp(_fp8_mlp_forward, _fp8_mlp_backward)


def quantize_tree(params: dict, fmt: str) -> dict:
    """A nested params dict with every `QUANTIZABLE` weight it holds quantized to ``fmt``, as
    a frozen_dtype=int8/float8 run stores the frozen ones (benchmarks and tests)."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    for k in set(QUANTIZABLE) & set(flat):
        flat[k] = quantize(k, flat[k], fmt)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def dequantize_tree(params, dtype):
    """Every QArray leaf of a params tree as a plain ``dtype`` array (a no-op without any)."""
    return jax.tree.map(lambda x: x.astype(dtype) if is_quantized(x) else x, params,
                        is_leaf=is_quantized)


def has_quantized(params) -> bool:
    return any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized))
