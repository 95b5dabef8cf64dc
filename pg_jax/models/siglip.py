"""SigLIP vision transformer, the image tower of PaliGemma 1 and 2.

A pre-LN ViT with a learned position embedding, no class token and no pooling:
every patch becomes one token, projected by ``head`` to the LLM width (that
Dense layer is PaliGemma's whole "projector").

Parameter names and shapes are those of the released big_vision checkpoints
(``img/...``); the blocks are stacked on a leading layer axis by ``nn.scan``
under ``Transformer/encoderblock``.

Einsum legend: B batch, P patches (tokens), N heads, H head dim, D width.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from pg_jax.models import attention, lora, quant


class Dense(nn.Module):
    """flax's ``Dense`` / ``DenseGeneral`` over the last ``in_axes`` axes, plus LoRA's term.

    The same parameters (``kernel [*inputs, *features]``, ``bias [*features]``), initialisation
    and product as flax's layers, which cannot hold LoRA factors beside their kernel.
    """

    features: tuple[int, ...]
    in_axes: int = 1
    dtype: str = "float32"
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x):
        n = self.in_axes
        shape = (*x.shape[x.ndim - n:], *self.features)

        def kernel_init(rng, shape, dtype=jnp.float32):  # as flax: LeCun over [inputs, features]
            flat = (int(np.prod(shape[:n])), int(np.prod(shape[n:])))
            return nn.initializers.lecun_normal()(rng, flat, dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, shape)
        bias = self.param("bias", nn.initializers.zeros_init(), self.features)
        inputs, features = "ijk"[:n], "nopq"[:len(self.features)]
        y = quant.einsum(f"...{inputs},{inputs}{features}->...{features}", x.astype(self.dtype),
                         kernel) + bias.astype(self.dtype)
        d = lora.delta(self, "kernel", x.astype(self.dtype), shape, self.lora)
        return y if d is None else y + d


class MultiHeadAttention(nn.Module):
    """Self-attention with q/k/v/out biases, as big_vision's ViT has."""

    num_heads: int
    dtype: str = "float32"
    attention_impl: str = "einsum"
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        dense = lambda name: Dense(  # noqa: E731
            (self.num_heads, head_dim), dtype=self.dtype, lora=self.lora, name=name
        )
        q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)
        encoded = attention.attend(q, k, v, None, implementation=self.attention_impl)
        out = Dense((width,), in_axes=2, dtype=self.dtype, lora=self.lora, name="out")
        return out(encoded)


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: str = "float32"
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = Dense((self.mlp_dim,), dtype=self.dtype, lora=self.lora, name="Dense_0")(x)
        x = nn.gelu(x, approximate=True)
        return Dense((width,), dtype=self.dtype, lora=self.lora, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

    mlp_dim: int
    num_heads: int
    dtype: str = "float32"
    attention_impl: str = "einsum"
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x, _):
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
        y = MultiHeadAttention(
            self.num_heads, self.dtype, self.attention_impl, self.lora,
            name="MultiHeadDotProductAttention_0",
        )(y)
        x = checkpoint_name(x + y, "vit_attn_residual")
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
        y = MlpBlock(self.mlp_dim, self.dtype, self.lora, name="MlpBlock_0")(y)
        return checkpoint_name(x + y, "vit_block_out"), None


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: str = "float32"
    attention_impl: str = "einsum"
    remat_policy: str = "none"
    scan_unroll: int = 1
    lora: flax.core.FrozenDict | None = None

    @nn.compact
    def __call__(self, x):
        block = Encoder1DBlock
        if self.remat_policy != "none":
            block = nn.remat(
                block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, self.remat_policy)
            )
        # Layers are scanned so that the parameters are stacked on axis 0, the
        # layout of the released checkpoints; `unroll` trades compile time for
        # cross-layer scheduling freedom without changing that layout.
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=self.depth,
            unroll=self.scan_unroll,
        )(self.mlp_dim, self.num_heads, self.dtype, self.attention_impl, self.lora,
          name="encoderblock")
        x, _ = blocks(x, None)
        return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


class Model(nn.Module):
    """SigLIP ViT: image float[B, R, R, 3] in [-1, 1] -> tokens float[B, P, num_classes]."""

    # The sizes (pg_jax.models.variants has the released ones).
    num_classes: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int
    image_size: int
    dtype: str = "float32"
    attention_impl: str = "einsum"
    remat_policy: str = "none"
    scan_unroll: int = 1
    # LoRA factors beside the targeted weights (see pg_jax.models.lora); None: none.
    lora: flax.core.FrozenDict | None = None

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @nn.compact
    def __call__(self, image):
        if image.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"image of shape {image.shape}; this model takes "
                f"[B, {self.image_size}, {self.image_size}, 3]"
            )
        p = self.patch_size
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
        )(image.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, self.width)
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=self.width**-0.5),
            (1, self.num_patches, self.width),
        )
        x = x + pos.astype(self.dtype)
        x = Encoder(
            self.depth,
            self.mlp_dim,
            self.num_heads,
            self.dtype,
            self.attention_impl,
            self.remat_policy,
            self.scan_unroll,
            self.lora,
            name="Transformer",
        )(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
