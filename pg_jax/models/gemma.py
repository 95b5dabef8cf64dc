"""Gemma (PaliGemma 1) and Gemma 2 (PaliGemma 2) decoder.

Einsum legend: B batch, T query length, S key/value length, N query heads,
K key/value heads, G query heads per kv head, H head dim, D width, F MLP width,
V vocabulary, L layers.

Parameter names and shapes are those of the released big_vision checkpoints
(``llm/...``). Layers are stacked on a leading L axis by ``nn.scan``; the
per-layer KV cache is scanned alongside them, so the cache arrays are
``[L, B, S, K, H]``.

Numerics: matmuls run in ``dtype``; RMSNorm, RoPE, attention logits and softmax,
and the output logits are computed in float32 whatever ``dtype`` is (fp16 on
T4/P100 overflows otherwise).
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from pg_jax.models import attention, lora, quant
from pg_jax.models.gelu import tanh_gelu_and_derivative

QUERY_PRE_ATTN_NORMS = ("rsqrt_head_dim", "rsqrt_emb_per_head")


def _init(in_axis, out_axis):
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000) -> jax.Array:
    """Rotary position embedding, split-half form, computed in float32.

    Args:
      x: float[B, T, N, H].
      positions: int[B, T] absolute positions.

    Returns:
      float[B, T, N, H] with the dtype of ``x``: ``[x1 cos - x2 sin, x2 cos + x1 sin]``
      over the two halves of H.
    """
    half = x.shape[-1] // 2
    timescale = max_wavelength ** (2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
    radians = positions.astype(jnp.float32)[..., None, None] / timescale  # [B, T, 1, H/2]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * (1 + scale)``, in float32."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Einsum(nn.Module):
    """A weight ``w`` of a given shape applied with an einsum equation (plus LoRA's term)."""

    shape: tuple[int, ...]
    w_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", self.w_init, self.shape)
        y = quant.einsum(eqn, x, w)
        d = lora.delta(self, "w", x, self.shape, self.lora)
        return y if d is None else y + d


def _matmul(x: jax.Array, w) -> jax.Array:
    """``x[..., K] @ w[K, N]`` in x's dtype (``w`` plain or 8-bit), a single row padded to two.

    XLA runs a one-row product with a weight of under 10M elements as a reduction, at about a
    third of the HBM bandwidth on an H100 (9.4 us for the 10 MB q/k/v weight of a decode step
    at batch 1); two rows make it a GEMM. One row by a float8 weight on an FP8 GPU has its own
    kernel instead (`quant.one_row_kernel_applies`).
    """
    if x.size != x.shape[-1] or quant.one_row_kernel_applies(w):
        return quant.einsum("...K,KN->...N", x, w)
    two = jnp.pad(x.reshape(1, -1), ((0, 1), (0, 0)))
    return quant.einsum("MK,KN->MN", two, w)[0].reshape(*x.shape[:-1], w.shape[-1])


class FlatMatmul(nn.Module):
    """``Einsum``'s weight ``w[K1, K2, .., N]`` applied as the matrix ``[K1 * K2 * .., N]``."""

    shape: tuple[int, ...]
    w_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("w", self.w_init, self.shape)
        # An 8-bit weight's values and scales take the same reshape (its scale's input axes are 1).
        return _matmul(x, jax.tree.map(lambda a: a.reshape(-1, a.shape[-1]), w))


class Embedder(nn.Module):
    """Token embedding, tied with the output projection."""

    vocab_size: int
    width: int

    def setup(self):
        self.input_embedding = self.param(
            "input_embedding",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0),
            (self.vocab_size, self.width),
        )

    def encode(self, tokens: jax.Array, dtype) -> jax.Array:
        x = self.input_embedding[(tokens,)].astype(dtype)
        return x * jnp.asarray(self.width**0.5, dtype)

    def decode(self, x: jax.Array) -> jax.Array:
        table = self.input_embedding
        if quant.is_quantized(table):  # 8-bit, one scale per token = per logit
            return quant.tied_logits(x, table)
        return attention.einsum_float32("...D,VD->...V", x, table.astype(x.dtype))


class Attention(nn.Module):
    """Multi-query / grouped-query attention with RoPE and an optional KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    query_pre_attn_norm: str = "rsqrt_head_dim"
    attn_logits_softcap: float = 0.0
    attention_impl: str = "einsum"
    lora: flax.core.FrozenDict | None = None

    # True: q, k and v come from one [D, (N + 2K) * H] matrix ("qkv_fused", made by
    # fuse_qkv), and both projections are plain matrix products (_matmul). Decoding uses
    # it: one product instead of two or three per layer, and at batch 1 _matmul keeps
    # them GEMMs (2.74 -> 2.26 ms per token for PaliGemma 1 3B on an H100).
    fused_qkv: bool = False

    @nn.compact
    def __call__(self, x, positions, attn_mask, kv_cache, cache_index):
        width = x.shape[-1]
        n, k_heads, h = self.num_heads, self.num_kv_heads, self.head_dim
        if self.fused_qkv:
            if self.lora:
                raise ValueError("fused_qkv takes merged weights: lora.merge the params first")
            shape = (width, (n + 2 * k_heads) * h)
            w = self.param("qkv_fused", nn.initializers.lecun_normal(), shape)
            qkv = _matmul(x, w)
            q, k, v = jnp.split(qkv, [n * h, (n + k_heads) * h], axis=-1)
            q = q.reshape(*x.shape[:-1], n, h)
            k, v = (a.reshape(*x.shape[:-1], k_heads, h) for a in (k, v))
        elif n == k_heads:
            # Multi-head checkpoints store q, k and v in one tensor.
            qkv = Einsum((3, n, width, h), _init((2,), (0, 1, 3)), self.lora, name="qkv_einsum")
            q, k, v = qkv("BTD,3NDH->3BTNH", x)
        else:
            q = Einsum((n, width, h), _init((1,), (0, 2)), self.lora, name="q_einsum")(
                "BTD,NDH->BTNH", x
            )
            kv = Einsum((2, k_heads, width, h), _init((2,), (0, 1, 3)), self.lora,
                        name="kv_einsum")
            k, v = kv("BSD,2KDH->2BSKH", x)

        q = apply_rope(q, positions)
        k = apply_rope(k, positions)
        if self.query_pre_attn_norm == "rsqrt_head_dim":
            q = q * jnp.asarray(h**-0.5, q.dtype)
        elif self.query_pre_attn_norm == "rsqrt_emb_per_head":  # Gemma 2 27B.
            q = q * jnp.asarray((width // n) ** -0.5, q.dtype)
        else:
            raise ValueError(
                f"query_pre_attn_norm {self.query_pre_attn_norm!r} not in {QUERY_PRE_ATTN_NORMS}"
            )

        if kv_cache is None:
            new_kv = (k, v)
        else:
            # Write this step's keys/values at cache_index (the same slot for
            # every example; examples differ only in which slots are valid).
            k_cache, v_cache = kv_cache
            start = (0, cache_index, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            new_kv = (k_cache, v_cache)
            k, v = k_cache.astype(x.dtype), v_cache.astype(x.dtype)

        encoded = attention.attend(
            q,
            k,
            v,
            attn_mask,
            softcap=self.attn_logits_softcap,
            implementation=self.attention_impl,
        )
        encoded = checkpoint_name(encoded, "attn_encoded")
        if self.fused_qkv:  # decoding: the same weight and product, as one matrix
            out = FlatMatmul((n, h, width), _init((0, 1), (2,)), name="attn_vec_einsum")
            return out(encoded.reshape(*encoded.shape[:-2], n * h)), new_kv
        out = Einsum((n, h, width), _init((0, 1), (2,)), self.lora, name="attn_vec_einsum")
        return out("BTNH,NHD->BTD", encoded), new_kv


@jax.custom_vjp
def gelu_gated(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``gelu_tanh(gate) * up``, with a hand-written backward pass.

    Autodiff saved more than gate and up for each MLP layer's backward; this one saves only
    those two (in their dtype) and writes both gradients from one elementwise pass, computed in
    float32. At PaliGemma 1 3B 224/32 on an H100: peak memory 28.0 -> 22.9 GiB and 184.2 ->
    185.3 examples/s (scripts/bench_train_step.py).
    """
    return nn.gelu(gate, approximate=True) * up


def _gelu_gated_fwd(gate, up):
    return gelu_gated(gate, up), (gate, up)


def _gelu_gated_bwd(saved, grad):
    gate, up = saved
    gelu, dgelu = tanh_gelu_and_derivative(gate.astype(jnp.float32))
    g = grad.astype(jnp.float32)
    d_gate = g * up.astype(jnp.float32) * dgelu
    return d_gate.astype(gate.dtype), (g * gelu).astype(up.dtype)


gelu_gated.defvjp(_gelu_gated_fwd, _gelu_gated_bwd)


class FeedForward(nn.Module):
    """GeGLU: ``(gelu_tanh(x @ gating[0]) * (x @ gating[1])) @ linear``."""

    mlp_dim: int
    # False: one batched product over the gate|up axis. Decoding needs it: slicing a layer's
    # weight in two made XLA copy both halves on every token, which dominated one-token steps.
    # Training takes two products: 1.5% more examples/s at PG1-3B 224/32 on an H100.
    split_gating: bool = True
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        gating_shape, linear_shape = (2, width, self.mlp_dim), (self.mlp_dim, width)
        gating = self.param("gating_einsum", _init((1,), (0, 2)), gating_shape)
        linear = self.param("linear", _init((0,), (1,)), linear_shape)
        if (self.split_gating and quant.fp8_mlp_applies(x, gating, linear)
                and not any(lora.is_target(lora.weight_key(self, k), self.lora)
                            for k in ("gating_einsum", "linear"))):
            return quant.fp8_mlp(x, gating, linear)  # the GeGLU's FP8 scaling in kernels
        if self.split_gating:
            gate, up = (quant.einsum("...D,DF->...F", x, gating[i]) for i in (0, 1))
        else:
            both = jnp.broadcast_to(x, (2, *x.shape))
            gate, up = quant.einsum("K...D,KDF->K...F", both, gating)
        d = lora.delta(self, "gating_einsum", x, gating_shape, self.lora)
        if d is not None:
            gate, up = gate + d[0], up + d[1]
        hidden = gelu_gated(gate, up)
        hidden = checkpoint_name(hidden, "mlp_hidden")
        out = quant.einsum("...F,FD->...D", hidden, linear)
        d = lora.delta(self, "linear", hidden, linear_shape, self.lora)
        return out if d is None else out + d


class Block(nn.Module):
    """Decoder block; Gemma 2 adds norms after attention and after the MLP."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    query_pre_attn_norm: str = "rsqrt_head_dim"
    attn_logits_softcap: float = 0.0
    post_norms: bool = False
    sliding_window: int = 0
    attention_impl: str = "einsum"
    fused_qkv: bool = False
    split_gating: bool = True
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x, scanned, positions, key_positions, attn_mask, cache_index):
        """One layer. ``scanned`` = (layer's kv cache or None, whether it slides)."""
        kv_cache, is_sliding = scanned
        if self.sliding_window:
            # HF Gemma 2 limits every other layer to the last `sliding_window`
            # positions; only sequences longer than the window (896 px) notice.
            near = positions[:, :, None] - key_positions[:, None, :] < self.sliding_window
            if isinstance(attn_mask, attention.KeyLengths):
                attn_mask = attn_mask.dense(*near.shape[1:])
            attn_mask = jnp.where(is_sliding, attn_mask & near, attn_mask)

        y = RMSNorm(name="pre_attention_norm")(x)
        y, new_kv = Attention(
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.query_pre_attn_norm,
            self.attn_logits_softcap,
            self.attention_impl,
            self.lora,
            self.fused_qkv,
            name="attn",
        )(y, positions, attn_mask, kv_cache, cache_index)
        if self.post_norms:
            y = RMSNorm(name="post_attention_norm")(y)
        x = checkpoint_name(x + y, "attn_residual")
        y = RMSNorm(name="pre_ffw_norm")(x)
        y = FeedForward(self.mlp_dim, self.split_gating, self.lora, name="mlp")(y)
        if self.post_norms:
            y = RMSNorm(name="post_ffw_norm")(y)
        return checkpoint_name(x + y, "block_out"), new_kv


class Model(nn.Module):
    """The Gemma decoder over already-embedded inputs.

    Call order used by PaliGemma: ``embed_tokens`` -> ``__call__`` on the
    concatenated image + text embeddings -> ``compute_logits`` on the positions
    that need logits.
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    query_pre_attn_norm: str = "rsqrt_head_dim"
    attn_logits_softcap: float = 0.0
    final_logits_softcap: float = 0.0
    post_norms: bool = False
    sliding_window: int = 0
    dtype: str = "float32"
    attention_impl: str = "einsum"
    remat_policy: str = "none"
    # Layers per scan iteration. Training without remat runs fully unrolled (= depth): the
    # rolled loop stacks every layer's saved activations into buffers and slices weights out
    # of the stacked arrays, which cost 1.23x in speed and 20 GiB at PG1-3B 224/32 on an H100.
    scan_unroll: int = 1
    # False: one parameter subtree per layer ("layers_0", ...; see
    # unstack_layers). Decoding uses it: slicing stacked weights inside a loop
    # makes XLA copy every layer's weights on every generated token.
    scan: bool = True
    # Attention's q/k/v weights as one matrix (see Attention.fused_qkv, fuse_qkv).
    fused_qkv: bool = False
    # GeGLU's gate and up as two products (training) or one batched product (decoding); see
    # FeedForward.split_gating.
    split_gating: bool = True
    # LoRA factors beside the targeted weights (see pg_jax.models.lora); None: none.
    lora: flax.core.FrozenDict | None = None

    def setup(self):
        self.embedder = Embedder(self.vocab_size, self.width)
        block = Block
        if self.remat_policy != "none":
            # Inside a rolled scan loop the recomputation cannot be merged with the forward
            # pass, so CSE prevention (which costs speed) is unneeded. Fully unrolled, XLA
            # would merge them; the barriers stop that, but XLA may still schedule the
            # recomputation early and keep the memory (measured), so remat goes with a scan.
            unrolled = not self.scan or self.scan_unroll >= self.depth
            block = nn.remat(
                block,
                prevent_cse=unrolled,
                policy=getattr(jax.checkpoint_policies, self.remat_policy),
            )
        block_args = (
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.mlp_dim,
            self.query_pre_attn_norm,
            self.attn_logits_softcap,
            self.post_norms,
            self.sliding_window,
            self.attention_impl,
            self.fused_qkv,
            self.split_gating,
            self.lora,
        )
        if self.scan:
            self.layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.depth,
                unroll=self.scan_unroll,
            )(*block_args)
        else:
            self.layers = [block(*block_args, name=f"layers_{i}") for i in range(self.depth)]
        self.final_norm = RMSNorm()

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """int[B, T] -> float[B, T, D] scaled by sqrt(D), in ``dtype``."""
        return self.embedder.encode(tokens, self.dtype)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        attn_mask: jax.Array,
        kv_cache: dict | None = None,
        cache_index: jax.Array | None = None,
    ):
        """Runs the decoder layers.

        Args:
          x: float[B, T, D] embedded inputs.
          positions: int[B, T] RoPE positions of the inputs.
          attn_mask: bool[B, T, S]; S = T without a cache, the cache size with one. Or an
            ``attention.KeyLengths`` (no cache; every query sees its row's first keys).
          kv_cache: None, or {"k", "v": [L, B, S, K, H], "pos": int[B, S]} to attend
            over; this step's keys/values are written at ``cache_index``.
          cache_index: int32 scalar slot of the first input in the cache.

        Returns:
          (pre_logits float[B, T, D] after the final norm,
           {"k", "v": [L, B, S', K, H]}: the updated cache, or this call's keys
           and values (S' = T) when there is no cache).
        """
        x = x.astype(self.dtype)
        is_sliding = jnp.arange(self.depth) % 2 == 0  # HF: layers 0, 2, 4, ... slide.
        if kv_cache is None:
            layer_kv, key_positions = None, positions
        else:
            layer_kv = (kv_cache["k"], kv_cache["v"])
            key_positions = kv_cache["pos"]
        if self.scan:
            x, (k, v) = self.layers(
                x, (layer_kv, is_sliding), positions, key_positions, attn_mask, cache_index
            )
            return self.final_norm(x), {"k": k, "v": v}
        # Unstacked layers: the cache is a tuple of per-layer arrays (or stacked).
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            kv_i = None if layer_kv is None else (layer_kv[0][i], layer_kv[1][i])
            x, (k, v) = layer(
                x, (kv_i, is_sliding[i]), positions, key_positions, attn_mask, cache_index
            )
            ks.append(k)
            vs.append(v)
        return self.final_norm(x), {"k": tuple(ks), "v": tuple(vs)}

    def compute_logits(self, pre_logits: jax.Array) -> jax.Array:
        """float[..., D] -> float32[..., V] through the tied embedding."""
        logits = self.embedder.decode(pre_logits)
        if self.final_logits_softcap:
            logits = jnp.tanh(logits / self.final_logits_softcap) * self.final_logits_softcap
        return logits


def unstack_layers(llm_params: dict, depth: int, fused_qkv: bool = False) -> dict:
    """Stacked ``layers/...[L, ...]`` -> ``layers_{i}/...`` for ``Model(scan=False)``.

    With ``fused_qkv`` the attention weights also become ``Model(fused_qkv=True)``'s
    single q/k/v matrix (see fuse_qkv).
    """
    params = dict(llm_params)
    stacked = params.pop("layers")
    for i in range(depth):
        layer = jax.tree.map(lambda x, i=i: x[i], stacked)
        if fused_qkv:
            layer = {**layer, "attn": fuse_qkv(layer["attn"])}
        params[f"layers_{i}"] = layer
    return params


def fuse_qkv(attn_params: dict) -> dict:
    """One layer's attention params -> ``Attention(fused_qkv=True)``'s.

    ``q_einsum [N, D, H]`` + ``kv_einsum [2, K, D, H]`` (or ``qkv_einsum [3, N, D, H]``)
    become ``qkv_fused [D, (N + 2K) * H]``: columns q heads, then k heads, then v heads.
    """
    attn = dict(attn_params)
    if "qkv_einsum" in attn:
        qkv = attn.pop("qkv_einsum")["w"]
        parts = [qkv[0], qkv[1], qkv[2]]  # 3 x [N, D, H]
    else:
        kv = attn.pop("kv_einsum")["w"]
        parts = [attn.pop("q_einsum")["w"], kv[0], kv[1]]
    if len({quant.is_quantized(p) for p in parts}) > 1:  # one trainable, one frozen in 8 bits
        dtype = next(p.dtype for p in parts if not quant.is_quantized(p))
        parts = [p.astype(dtype) for p in parts]
    # [D, heads * H] each; an 8-bit weight's values and scales alike (its scale's D axis is 1).
    columns = [jax.tree.map(lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1), p)
               for p in parts]
    attn["qkv_fused"] = jax.tree.map(lambda *c: jnp.concatenate(c, axis=1), *columns)
    return attn
