"""Scaled dot-product attention shared by the SigLIP and Gemma towers.

Einsum legend: B batch, T query length, S key/value length, N query heads,
K key/value heads, G query heads per key/value head (N = K * G), H head dim.

Two implementations sit behind one option so that they can be compared and
swapped from a config:

- ``"einsum"``: plain einsums with float32 logits and softmax. Supports the
  Gemma 2 logit soft-cap. Works everywhere and is the numerical reference.
- ``"xla"`` / ``"cudnn"``: ``jax.nn.dot_product_attention``; ``"cudnn"`` asks
  for the fused cuDNN kernel (GPU only, bf16/f16). No soft-cap support.
- ``"pallas"``: pg_jax.models.flash_attention's fused forward kernel (Pallas, Triton; GPU)
  with the einsum backward pass. Takes the soft-cap; one-token decode steps and heads the
  kernel does not tile (`flash_attention.supports`) keep the einsums.
- ``"auto"``: ``"pallas"`` on a bf16 GPU for heads the kernel tiles (Gemma's), ``"cudnn"``
  for other heads where the device runs it; else ``"einsum"``
  (pg_jax.devices.attention_implementation).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pg_jax import devices
from pg_jax.models import flash_attention

# Large negative logit for masked positions (shared with the kernel, which must mask alike).
BIG_NEG = flash_attention.BIG_NEG

IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "pallas", "auto")


class KeyLengths(NamedTuple):
    """A mask given by lengths: every query sees keys ``[0, lengths[b])`` of its row.

    An all-prefix prompt with right padding (a decode prefill) needs no more, and the fused
    kernels take lengths natively; a dense mask costs them 2.8x (measured on an H100 at
    [16, 1040, 8, 256]: 0.85 vs 0.30 ms per layer).
    """

    lengths: jax.Array  # int32[B]

    def dense(self, num_queries: int, num_keys: int) -> jax.Array:
        """The same mask as bool[B, T, S]."""
        keys = jnp.arange(num_keys)[None, None, :] < self.lengths[:, None, None]
        return jnp.broadcast_to(keys, (self.lengths.shape[0], num_queries, num_keys))


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    softcap: float = 0.0,
    implementation: str = "einsum",
) -> jax.Array:
    """Attention of already-scaled queries over keys and values.

    Args:
      q: float[B, T, N, H] queries, already multiplied by the query scale.
      k: float[B, S, K, H] keys (K divides N: MHA, GQA or MQA).
      v: float[B, S, K, H] values.
      mask: bool[B, T, S], True where query t may attend to key s; a KeyLengths; or
        None (all).
      softcap: if > 0, logits become ``softcap * tanh(logits / softcap)``.
      implementation: one of IMPLEMENTATIONS.

    Returns:
      float[B, T, N, H] in the dtype of ``v``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} not in {IMPLEMENTATIONS}")
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if n % kv_heads:
        raise ValueError(f"{n} query heads are not a multiple of {kv_heads} kv heads")
    implementation = devices.attention_implementation(
        implementation, jax.devices()[0], dtype=q.dtype, head_dim=h, softcap=softcap)

    if implementation == "pallas" and t > 1 and flash_attention.supports(h):
        if isinstance(mask, KeyLengths):
            mask = mask.dense(t, k.shape[1])
        # Pallas's interpreter elsewhere: slow, but the same kernel (the tests).
        return flash_attention.attend(q, k, v, mask, softcap=softcap,
                                      interpret=jax.default_backend() != "gpu")
    if implementation not in ("einsum", "pallas"):
        if softcap:
            raise ValueError(
                f"attention implementation {implementation!r} has no logit soft-cap; "
                "use 'einsum' for Gemma 2 (PaliGemma 2)."
            )
        lengths = {}
        if isinstance(mask, KeyLengths):
            lengths = {"key_value_seq_lengths": mask.lengths, "query_seq_lengths": mask.lengths}
            mask = None
        if t == 1:
            # A one-token decode step: cuDNN's kernel pads the single query to a tile, XLA's
            # own attention is faster there (H100, PaliGemma 1 3B at batch 16: 2.29 vs
            # 2.45 ms per token).
            implementation = "xla"
        out_dtype = v.dtype
        if implementation == "xla" and _upcast_dot_operands():
            q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=None if mask is None else mask[:, None, :, :],
            scale=1.0,
            implementation=None if implementation == "xla" else "cudnn",
            **lengths,
        ).astype(out_dtype)

    if isinstance(mask, KeyLengths):
        mask = mask.dense(t, k.shape[1])
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)
    if t == 1:
        # A one-token decode step: no gradient, and the KV cache stays in its layout (the
        # head-major one below would copy the whole cache on every token).
        logits = _capped(einsum_float32("BTKGH,BSKH->BKGTS", q, k), mask, softcap)[0]
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
    # Head-major layouts, [B, K, G, T, H] and [B, K, S, H]: every product below is then a
    # batched GEMM over (B, K) whose [B, K, G, T, S] operand or result needs no transpose.
    # Only q, k, v and the output (H wide) are transposed.
    q = q.transpose(0, 2, 3, 1, 4)
    k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    encoded = _einsum_attention(q, k, v, mask, softcap)
    return encoded.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _capped(logits, mask, softcap):
    """float32[B, K, G, T, S] logits soft-capped and masked, and ``tanh(logits / softcap)``
    (None without a cap), which the backward pass reuses."""
    capped = None
    if softcap:
        capped = jnp.tanh(logits / softcap)
        logits = capped * softcap
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, BIG_NEG)
    return logits, capped


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _einsum_attention(q, k, v, mask, softcap):
    """Softmax attention with float32 logits: q [B, K, G, T, H], k and v [B, K, S, H].

    Its backward pass recomputes the logits from q and k, as a fused attention kernel does,
    instead of saving them: autodiff kept float32 [B, K, G, T, S] tensors (logits, tanh and
    softmax) for every layer and spent more time reading and transposing them than the
    products took (PaliGemma 2, whose soft-cap rules out the fused kernels; BENCHMARKS.md).
    Saved: the inputs, the output and two float32 [B, K, G, T] softmax statistics.
    """
    return _einsum_attention_fwd(q, k, v, mask, softcap)[0]


def _einsum_attention_fwd(q, k, v, mask, softcap):
    logits, _ = _capped(einsum_float32("BKGTH,BKSH->BKGTS", q, k), mask, softcap)
    top = jnp.max(logits, axis=-1, keepdims=True)
    unnormalized = jnp.exp(logits - top)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = (unnormalized / total).astype(v.dtype)
    encoded = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v)
    return encoded, (q, k, v, mask, encoded, top, total)


def einsum_attention_backward(softcap, saved, d_encoded):
    """`_einsum_attention`'s backward pass; also `flash_attention`'s, from its forward kernel's
    statistics."""
    q, k, v, mask, encoded, top, total = saved
    # The barrier keeps XLA from merging this product with the forward pass's identical one,
    # which would keep the forward's float32 logits alive until here (PaliGemma 2 3B 448/8
    # on an H200: 45.0 GiB without it, 27.7 with; see BENCHMARKS.md).
    q, k = jax.lax.optimization_barrier((q, k))
    logits, capped = _capped(einsum_float32("BKGTH,BKSH->BKGTS", q, k), mask, softcap)
    # The forward pass's probabilities, bit for bit (a fully masked row stays uniform).
    probs = jnp.exp(logits - top) / total
    d_v = jnp.einsum("BKGTS,BKGTH->BKSH", probs.astype(v.dtype), d_encoded)
    # In v's dtype, as autodiff of the bf16 probabilities-by-values product gives it.
    d_probs = jnp.einsum("BKGTH,BKSH->BKGTS", d_encoded, v).astype(jnp.float32)
    # Softmax backward: p * (dp - sum_s p dp), where sum_s p dp = <d_encoded, encoded>.
    row = jnp.sum(d_encoded.astype(jnp.float32) * encoded.astype(jnp.float32), axis=-1)
    d_logits = probs * (d_probs - row[..., None])
    if mask is not None:
        d_logits = jnp.where(mask[:, None, None, :, :], d_logits, 0.0)
    if softcap:  # d/dx softcap tanh(x / softcap) = 1 - tanh^2
        d_logits = d_logits * (1.0 - capped * capped)
    d_logits = d_logits.astype(q.dtype)
    d_q = jnp.einsum("BKGTS,BKSH->BKGTH", d_logits, k)
    d_k = jnp.einsum("BKGTS,BKGTH->BKSH", d_logits, q)
    return d_q, d_k, d_v, None


_einsum_attention.defvjp(_einsum_attention_fwd, einsum_attention_backward)


def _upcast_dot_operands() -> bool:
    """Whether products with float32 results take float32 operands, not bfloat16/float16.

    On the CPU backend: XLA's CPU backend converts low-precision operands to float32 anyway
    (so the results are the same), and the one in jaxlib 0.7 fails on some bfloat16 x
    bfloat16 -> float32 products ("UNIMPLEMENTED: Unsupported element type for
    DotThunk::Execute") instead of converting them.
    """
    return jax.default_backend() == "cpu"


def einsum_float32(eqn: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """``jnp.einsum(eqn, x, y)`` accumulated in and returned as float32, whatever the inputs."""
    if _upcast_dot_operands():
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return jnp.einsum(eqn, x, y, preferred_element_type=jnp.float32)
