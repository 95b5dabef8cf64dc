"""PaliGemma: SigLIP image tokens followed by text tokens, decoded by Gemma.

The sequence is ``[image tokens][text tokens]``. Image tokens and the prompt
attend to each other bidirectionally (a prefix); the answer is causal. Which
tokens belong to which block is described by ``mask_ar`` (see
``make_attn_mask``).

Parameters: ``{"img": <siglip params>, "llm": <gemma params>}``, exactly the
tree of big_vision's released ``.npz`` files.

Decoding uses an explicit KV cache (a dict of arrays, usable as a
``jax.lax`` loop carry):

    logits, cache = model.apply(v, image, text, input_mask, mask_ar,
                                cache_size=S, method=Model.prefill)
    logits, cache = model.apply(v, next_token, cache, method=Model.extend)
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from pg_jax.models import attention, gemma, lora, siglip


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """Prefix-LM attention mask from an input mask and an autoregressive mask.

    Token i may attend to token j iff ``cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]``
    and both are valid inputs. ``mask_ar`` is 1 where a token starts a new causal
    block and 0 where it joins the previous one. Worked examples (one row each):

      mask_ar [1 1 1 1]      -> plain causal attention.
      mask_ar [0 0 0 1 1 1]  -> the first 3 tokens see each other (the prefix,
                                i.e. image + prompt); the last 3 are causal.
      mask_ar [1 0 1 0 0]    -> two blocks {0,1} and {2,3,4}; each token sees its
                                block and all earlier blocks.

    Args:
      input_mask: bool[B, T], False on padding.
      mask_ar: int[B, T].

    Returns:
      bool[B, T, T].
    """
    cumsum = jnp.cumsum(mask_ar, axis=1)
    allowed = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return allowed & valid


def positions_from_mask(input_mask: jax.Array) -> jax.Array:
    """RoPE positions 0, 1, ... counting valid tokens only: int32[B, T]."""
    return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1, 0)


class Model(nn.Module):
    """PaliGemma. ``img`` and ``llm`` are the keyword arguments of the towers.

    ``lora``: optional LoRA factors beside the weights its ``targets`` name (see
    `pg_jax.models.lora`), e.g. ``dict(rank=8, alpha=16.0, targets=lora.TARGETS["attn"])``.
    """

    img: dict
    llm: dict
    lora: dict | None = None

    def __post_init__(self):
        # Frozen (hashable) tower configs make the module usable as a static
        # argument of jax.jit, e.g. by the decode loop.
        object.__setattr__(self, "img", flax.core.FrozenDict(self.img))
        object.__setattr__(self, "llm", flax.core.FrozenDict(self.llm))
        object.__setattr__(self, "lora", lora.normalize(self.lora))
        super().__post_init__()

    def setup(self):
        self._llm = gemma.Model(**self.llm, lora=self.lora, name="llm")
        self._img = siglip.Model(num_classes=self.llm["width"], **self.img, lora=self.lora,
                                 name="img")

    @property
    def num_image_tokens(self) -> int:
        return (self.img["image_size"] // self.img["patch_size"]) ** 2

    def embed_image_and_text(self, image, text, input_mask, mask_ar):
        """Returns the joint sequence (x float[B, P+T, D], input_mask, mask_ar)."""
        zimg = self._img(image).astype(self._llm.dtype)
        ztxt = self._llm.embed_tokens(text)
        x = jnp.concatenate([zimg, ztxt], axis=1)
        pad = ((0, 0), (zimg.shape[1], 0))
        input_mask = jnp.pad(input_mask.astype(bool), pad, constant_values=True)
        mask_ar = jnp.pad(mask_ar, pad, constant_values=0)
        return x, input_mask, mask_ar

    def __call__(
        self,
        image: jax.Array,
        text: jax.Array,
        mask_ar: jax.Array,
        input_mask: jax.Array | None = None,
        train: bool = False,
        logits_at: jax.Array | None = None,
    ):
        """Text logits of a batch of images and texts (big_vision's semantics).

        Args:
          image: float[B, R, R, 3] in [-1, 1].
          text: int32[B, T] token ids.
          mask_ar: int32[B, T], 0 for the prefix (prompt), 1 for causal tokens.
          input_mask: optional bool[B, T], False on padding. Default: all valid.
          train: unused (kept for big_vision's call signature): the one dropout, LoRA's,
            follows whether a "dropout" rng is passed (see `pg_jax.models.lora.delta`).
          logits_at: optional int32[B, P] text positions at which to compute
            logits. A [B, T, 257152] float32 logits tensor is the largest
            activation in training; the loss only needs the answer positions.

        Returns:
          (logits float32[B, T, V] or [B, P, V] with ``logits_at``,
           out: a dict of intermediates, "llm/pre_logits" float[B, T, D]).
        """
        del train
        if input_mask is None:
            input_mask = jnp.ones(text.shape, bool)
        x, full_mask, full_ar = self.embed_image_and_text(image, text, input_mask, mask_ar)
        attn_mask = make_attn_mask(full_mask, full_ar)
        pre_logits, _ = self._llm(x, positions_from_mask(full_mask), attn_mask)
        text_pre_logits = pre_logits[:, -text.shape[1] :]
        out = {"llm/pre_logits": text_pre_logits}
        if logits_at is not None:
            text_pre_logits = jnp.take_along_axis(text_pre_logits, logits_at[..., None], axis=1)
        return self._llm.compute_logits(text_pre_logits), out

    def compute_logits(self, pre_logits: jax.Array) -> jax.Array:
        """float[..., D] pre-logits -> float32[..., V] logits."""
        return self._llm.compute_logits(pre_logits)

    def prefill(
        self,
        image: jax.Array,
        text: jax.Array,
        input_mask: jax.Array,
        mask_ar: jax.Array,
        *,
        cache_size: int,
        cache_dtype=None,
        prompt_is_prefix: bool = False,
    ):
        """Runs the prompt and builds a KV cache for ``extend``.

        Prompts of different lengths share a batch: ``text`` is right-padded and
        ``input_mask`` marks the valid tokens; each example's next token goes to
        position ``len(prompt)`` but all examples write the same cache slot, the
        padding slots between staying masked out.

        Args:
          image: float[B, R, R, 3] in [-1, 1].
          text: int32[B, T] right-padded prompt tokens.
          input_mask: bool[B, T], True on prompt tokens.
          mask_ar: int32[B, T] (0 on the prompt for a prefix-LM prompt).
          cache_size: total slots S >= P + T + tokens to generate.
          cache_dtype: dtype of cached keys/values (default: compute dtype).
          prompt_is_prefix: promise that ``mask_ar`` is all zeros and ``input_mask`` is
            right padding (True then False on every row); the attention mask is then given
            by each row's length, which the fused attention kernels run much faster.

        Returns:
          (logits float32[B, V] at each example's last prompt token, cache).
        """
        x, full_mask, full_ar = self.embed_image_and_text(image, text, input_mask, mask_ar)
        seq_len = x.shape[1]
        if cache_size < seq_len:
            raise ValueError(f"cache_size {cache_size} < prompt length {seq_len}")
        positions = positions_from_mask(full_mask)
        if prompt_is_prefix:
            attn_mask = attention.KeyLengths(jnp.sum(full_mask, axis=1, dtype=jnp.int32))
        else:
            attn_mask = make_attn_mask(full_mask, full_ar)
        pre_logits, kv = self._llm(x, positions, attn_mask)

        last = jnp.sum(full_mask, axis=1) - 1  # index of each example's last valid token
        last_pre_logits = jnp.take_along_axis(pre_logits, last[:, None, None], axis=1)[:, 0]
        logits = self._llm.compute_logits(last_pre_logits)

        pad = cache_size - seq_len
        dtype = cache_dtype or x.dtype

        def pad_kv(a):
            """Empty slots after the prompt on the S axis of [(L,) B, S, K, H] arrays."""
            widths = [(0, 0)] * (a.ndim - 3) + [(0, pad), (0, 0), (0, 0)]
            return jnp.pad(a.astype(dtype), widths)

        cache = {  # the LLM's stacked [L, ...] arrays, or per-layer tuples when unstacked
            "k": jax.tree.map(pad_kv, kv["k"]),
            "v": jax.tree.map(pad_kv, kv["v"]),
            "mask": jnp.pad(full_mask, ((0, 0), (0, pad))),
            "pos": jnp.pad(positions, ((0, 0), (0, pad))),
            "index": jnp.asarray(seq_len, jnp.int32),
            "next_pos": last + 1,
        }
        return logits, cache

    def extend(self, tokens: jax.Array, cache: dict):
        """Feeds one token per example and advances the cache.

        Args:
          tokens: int32[B] the previous step's tokens.
          cache: from ``prefill`` or ``extend``.

        Returns:
          (logits float32[B, V] for the next token, updated cache).
        """
        index, positions = cache["index"], cache["next_pos"][:, None]
        x = self._llm.embed_tokens(tokens[:, None])
        mask = jax.lax.dynamic_update_slice(cache["mask"], jnp.ones_like(tokens, bool)[:, None], (0, index))
        key_pos = jax.lax.dynamic_update_slice(cache["pos"], positions, (0, index))
        pre_logits, kv = self._llm(
            x,
            positions,
            mask[:, None, :],
            kv_cache={"k": cache["k"], "v": cache["v"], "pos": key_pos},
            cache_index=index,
        )
        new_cache = {
            **kv,
            "mask": mask,
            "pos": key_pos,
            "index": index + 1,
            "next_pos": cache["next_pos"] + 1,
        }
        return self._llm.compute_logits(pre_logits[:, 0]), new_cache
