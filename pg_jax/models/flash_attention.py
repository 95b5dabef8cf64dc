"""A fused attention forward pass that takes the Gemma 2 logit soft-cap: a Pallas (Triton)
GPU kernel, with the einsum attention's backward pass.

cuDNN's fused attention takes no soft-cap, so PaliGemma 2's LLM runs the einsum attention,
which writes and reads float32 [B, N, T, S] logits several times per layer. The forward kernel
keeps a block of logits in registers instead (the flash-attention scheme: an online softmax
over the keys and values, block by block) and saves the output and two float32 statistics per
query row, the softmax's maximum and sum, which are exactly what the einsum attention's
backward pass (`pg_jax.models.attention`, which recomputes the logits) takes. Backward
kernels were built too and ran slower than those einsums at PaliGemma 2's 256-wide heads
(BENCHMARKS.md, "A soft-cap flash attention in Pallas"), so the backward pass stays theirs.
On an H200 at PaliGemma 2 3B's 448 px training shape the pair takes 1.15 ms per layer against
the einsums' 1.38.

Layouts are the model's own, q [B, T, N, H] and k, v [B, S, K, H] (no transposes forward); the
mask is a dense bool [B, T, S] (prefix-LM, sliding window and padding alike). Lengths are padded
to the blocks; padded keys are dropped exactly, so a fully masked query row stays uniform over
the real keys, as in the einsum attention. The tests run the same kernel through Pallas's
interpreter on the CPU.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pg_jax.models import row_partition

# The logit of masked positions, here and in pg_jax.models.attention's einsums. Finite (not
# -inf) so that a fully masked row (a padding query) gives a uniform softmax instead of NaN.
BIG_NEG = -2.3819763e38


class Config(NamedTuple):
    """Block sizes (powers of two, at least 16) and the Triton launch's warps and stages.

    The default is the best of a sweep at PaliGemma 2 3B's 448 px shape on an H200 (0.32 ms
    per layer; 64 x 64 blocks took 0.58).
    """
    block_q: int = 128
    block_k: int = 32
    num_warps: int = 8
    num_stages: int = 3


def supports(head_dim: int) -> bool:
    """Whether the kernel takes heads this wide: Triton's blocks are powers of two, at least
    16 (Gemma 2's are 256 and 128)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _dot(a, b, contract_a=1, contract_b=0):
    """A float32-accumulated product of two 2-D blocks over the given axes."""
    return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _logits(q, k, mask, keys_ok, softcap):
    """float32 [bq, bk] logits of one block, capped and masked, and tanh(logits / cap)."""
    raw = _dot(q, k, 1, 1)
    capped = None
    if softcap:
        capped = jnp.tanh(raw / softcap)
        raw = capped * softcap
    logits = jnp.where(mask != 0, raw, BIG_NEG)
    if keys_ok is not None:  # padded keys are out of the softmax altogether (exp(-inf) = 0)
        logits = jnp.where(keys_ok[None, :], logits, -jnp.inf)
    return logits, capped


def _keys_ok(start, block_k, num_keys):
    """Which of a block's keys are real; None where no key is padded."""
    if num_keys is None:
        return None
    return start + jax.lax.broadcasted_iota(jnp.int32, (block_k,), 0) < num_keys


def _forward_kernel(q_ref, k_ref, v_ref, mask_ref, o_ref, top_ref, inv_total_ref, *, softcap,
                    block_k, num_keys):
    """One block of queries of one head over every key, ``block_k`` keys at a time."""
    q = q_ref[...]
    block_q, head_dim = q.shape

    def step(j, carry):
        top, total, acc = carry
        start = pl.multiple_of(j * block_k, block_k)
        ks = pl.ds(start, block_k)
        logits, _ = _logits(q, k_ref[ks, :], mask_ref[:, ks], _keys_ok(start, block_k, num_keys),
                            softcap)
        new_top = jnp.maximum(top, jnp.max(logits, axis=1))
        probs = jnp.exp(logits - new_top[:, None])
        rescale = jnp.exp(top - new_top)
        total = total * rescale + jnp.sum(probs, axis=1)
        acc = acc * rescale[:, None] + _dot(probs.astype(v_ref.dtype), v_ref[ks, :])
        return new_top, total, acc

    # The running max starts at BIG_NEG, not -inf: a fully masked row's logits all equal it.
    init = (jnp.full((block_q,), BIG_NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
            jnp.zeros((block_q, head_dim), jnp.float32))
    top, total, acc = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, step, init)
    o_ref[...] = (acc / total[:, None]).astype(o_ref.dtype)
    # Not the log-sum-exp top + log(total): for a fully masked row (top = BIG_NEG) float32
    # drops the log, and the backward pass's probabilities would be 1 instead of 1 / S.
    top_ref[...] = top
    inv_total_ref[...] = 1.0 / total


def _params(num_warps, num_stages, interpret):
    if interpret:
        return {}
    return {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)}


def _pad(x, axis, size):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _forward(q, k, v, mask, softcap, num_keys, config, interpret):
    """Padded inputs (``num_keys`` real keys, None: all): the padded output, and each query row's
    softmax maximum and inverse sum (float32 [B, N, T])."""
    b, t, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    group = n // kv_heads
    sq = pl.squeezed
    kernel = functools.partial(_forward_kernel, softcap=softcap, block_k=config.block_k,
                               num_keys=num_keys)
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct(q.shape, v.dtype),
                   jax.ShapeDtypeStruct((b, n, t), jnp.float32),
                   jax.ShapeDtypeStruct((b, n, t), jnp.float32)),
        grid=(b, n, t // config.block_q),
        in_specs=[
            pl.BlockSpec((sq, config.block_q, sq, h), lambda bi, ni, i: (bi, i, ni, 0)),
            pl.BlockSpec((sq, s, sq, h), lambda bi, ni, i: (bi, 0, ni // group, 0)),
            pl.BlockSpec((sq, s, sq, h), lambda bi, ni, i: (bi, 0, ni // group, 0)),
            pl.BlockSpec((sq, config.block_q, s), lambda bi, ni, i: (bi, i, 0)),
        ],
        out_specs=(
            pl.BlockSpec((sq, config.block_q, sq, h), lambda bi, ni, i: (bi, i, ni, 0)),
            pl.BlockSpec((sq, sq, config.block_q), lambda bi, ni, i: (bi, ni, i)),
            pl.BlockSpec((sq, sq, config.block_q), lambda bi, ni, i: (bi, ni, i)),
        ),
        interpret=interpret,
        name="softcap_attention_forward",
        **_params(config.num_warps, config.num_stages, interpret),
    )(q, k, v, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, mask, softcap, config, interpret):
    return _attention_fwd(q, k, v, mask, softcap, config, interpret)[0]


def _attention_fwd(q, k, v, mask, softcap, config, interpret):
    b, t, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    t_pad, s_pad = _round_up(t, config.block_q), _round_up(s, config.block_k)
    # int8: Triton loads no booleans. Padded queries see no keys (their rows are dropped).
    mask8 = _pad(_pad(mask.astype(jnp.int8), 1, t_pad), 2, s_pad)
    padded = [_pad(q, 1, t_pad), _pad(k, 1, s_pad), _pad(v, 1, s_pad), mask8]
    forward = functools.partial(_forward, softcap=softcap, num_keys=s if s < s_pad else None,
                                config=config, interpret=interpret)
    if jax.device_count() == 1:
        out, top, inv_total = forward(*padded)
    else:  # each device its own batch elements
        out, top, inv_total = row_partition.over_leading_axis(forward, padded, [True] * 4)
    out = out[:, :t]
    # The statistics in the einsum attention's [B, K, G, T, 1] layout.
    top, inv_total = (x[:, :, :t].reshape(b, kv_heads, n // kv_heads, t, 1)
                      for x in (top, inv_total))
    return out, (q, k, v, mask, out, top, 1.0 / inv_total)


def _attention_bwd(softcap, config, interpret, saved, d_out):
    from pg_jax.models import attention  # it imports this module

    q, k, v, mask, out, top, total = saved
    b, t, n, h = q.shape
    kv_heads = k.shape[2]

    def head_major(x):  # [B, T, N, H] -> [B, K, G, T, H]
        return x.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)

    k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    dq, dk, dv, _ = attention.einsum_attention_backward(
        softcap, (head_major(q), k, v, mask, head_major(out), top, total), head_major(d_out))
    dq = dq.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
           softcap: float = 0.0, config: Config | None = None,
           interpret: bool = False) -> jax.Array:
    """Attention of already-scaled queries, as ``pg_jax.models.attention.attend``.

    Args:
      q: [B, T, N, H] queries, already multiplied by the query scale.
      k, v: [B, S, K, H] keys and values (K divides N).
      mask: bool[B, T, S], True where query t may attend to key s, or None (all).
      softcap: if > 0, logits become ``softcap * tanh(logits / softcap)``.
      config: block sizes and launch parameters.
      interpret: run through Pallas's interpreter (any backend: the tests).
    Returns:
      [B, T, N, H] in the dtype of ``v``.
    """
    if mask is None:
        mask = jnp.ones((q.shape[0], q.shape[1], k.shape[1]), jnp.bool_)
    return _attention(q, k, v, mask, float(softcap), config or Config(), interpret)
