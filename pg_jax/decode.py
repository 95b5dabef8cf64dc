"""Jitted KV-cache decoding for PaliGemma.

One compiled function per (model, shapes, sampler): a batched prefill of the
prompts with the prefix-LM mask, then a ``jax.lax.while_loop`` of one-token
extends over a fixed-size cache that stops when every sequence has produced
eos or ``max_decode_len`` tokens exist. Prompts of different lengths share a
batch (right-padded, ``mask_input`` marks the valid tokens).

    tokens = pg_jax.decode(model, params, batch, max_decode_len=32)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import gemma, lora, paligemma, quant

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
EOS_ID, PAD_ID = 1, 0


def sample_token(logits, rng, sampler="greedy", temperature=1.0, top_k=0, top_p=1.0):
    """Picks one token per row of float32[B, V] logits.

    Args:
      sampler: "greedy" (argmax), "temperature" (softmax(logits / t)),
        "top_k" (temperature sampling among the k most likely),
        "top_p" (temperature sampling from the smallest set of mass >= p).
    """
    if sampler == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if sampler == "top_k":
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    elif sampler == "top_p":
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep tokens whose preceding mass is < p (the first always stays).
        keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    elif sampler != "temperature":
        raise ValueError(f"sampler {sampler!r} not in {SAMPLERS}")
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


_dequantize = jax.jit(quant.dequantize_tree, static_argnums=1)
# One compiled converter for every caller (inside _decode it is inlined into the trace).
_unstack_llm = jax.jit(gemma.unstack_layers, static_argnums=1, static_argnames="fused_qkv")


def decoding_params(model: paligemma.Model, params: dict) -> dict:
    """The params in the layout the decode loop reads; ``decode`` accepts either.

    ``decode`` converts stored (stacked) params on every call, which copies every LLM weight
    (3.3 ms per call for PaliGemma 1 3B on an H100). Code that decodes many batches with the
    same weights (evaluators, the predict CLI) converts once with this. The result takes as
    much memory as the LLM weights again; drop it after decoding. LoRA factors are merged
    into their weights here, so a LoRA model decodes exactly like a plain one (8-bit frozen
    weights are dequantized for that). Without LoRA, 8-bit frozen weights stay 8-bit: the copy
    is half of bf16's, and the loop's one-token steps read half the bytes (`quant.FEW_ROWS`).
    """
    if "layers" not in params["llm"]:
        return params  # converted already
    if model.lora:
        # LoRA's factors merge into plain weights: 8-bit frozen ones are dequantized first.
        if quant.has_quantized(params):
            params = _dequantize(params, model.llm.get("dtype", "float32"))
        params = lora.merge_jit(params, model.lora)
    # Only the LLM is converted: the ViT's arrays are shared, not copied.
    return {**params, "llm": _unstack_llm(params["llm"], model.llm["depth"], fused_qkv=True)}


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_decode_len", "sampler", "temperature", "top_k", "top_p",
                     "eos_id", "cache_dtype", "prompt_is_prefix"),
)
def _decode(params, image, text, mask_input, mask_ar, rng, *, model, max_decode_len, sampler,
            temperature, top_k, top_p, eos_id, cache_dtype, prompt_is_prefix):
    # One-token steps read every weight once and little else. Slicing a layer
    # out of the stacked weights inside the loop made XLA copy all of them on
    # every token (measured: 2.2 of 5.2 ms per token on an H100), so prefill and
    # steps run an unstacked copy of the LLM (made here, or once by
    # decoding_params), with per-layer cache arrays that each step updates in place.
    step_model = model.clone(
        llm={**model.llm, "scan": False, "fused_qkv": True, "split_gating": False}, lora=None
    )
    variables = {"params": decoding_params(model, params)}  # a no-op once converted
    cache_size = model.num_image_tokens + text.shape[1] + max_decode_len
    logits, cache = step_model.apply(
        variables, image, text, mask_input, mask_ar, cache_size=cache_size,
        cache_dtype=cache_dtype, prompt_is_prefix=prompt_is_prefix,
        method=paligemma.Model.prefill,
    )
    sample = functools.partial(sample_token, sampler=sampler, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    batch = text.shape[0]
    token = sample(logits, jax.random.fold_in(rng, 0))
    out = jnp.full((batch, max_decode_len), PAD_ID, jnp.int32).at[:, 0].set(token)
    done = token == eos_id

    def cond(state):
        step, _, _, _, done = state
        return (step < max_decode_len) & ~jnp.all(done)

    def body(state):
        step, token, cache, out, done = state
        logits, cache = step_model.apply(variables, token, cache, method=paligemma.Model.extend)
        token = sample(logits, jax.random.fold_in(rng, step))
        token = jnp.where(done, PAD_ID, token)  # finished rows emit padding
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, out, done | (token == eos_id)

    state = (jnp.asarray(1, jnp.int32), token, cache, out, done)
    return jax.lax.while_loop(cond, body, state)[3]


def decode(
    model: paligemma.Model,
    params: dict,
    batch: dict,
    *,
    max_decode_len: int = 32,
    sampler: str = "greedy",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int = EOS_ID,
    cache_dtype: str | None = None,
) -> jax.Array:
    """Generates continuations of image + prompt.

    Args:
      model: a ``paligemma.Model``.
      params: its parameters (may be sharded; the batch may be too), as stored or
        converted once by ``decoding_params``.
      batch: {"image": float[B, R, R, 3] in [-1, 1], "text": int32[B, T]
        right-padded prompts ``[bos] prompt "\\n"``, "mask_input": bool/int[B, T]
        (default all valid), "mask_ar": int32[B, T] (default zeros: prefix-LM)}.
      max_decode_len: tokens to generate at most, eos included.
      sampler: one of SAMPLERS; ``seed`` makes sampling reproducible.
      eos_id: generation of a row stops after this token.
      cache_dtype: KV-cache dtype (default: the compute dtype).

    Returns:
      int32[B, max_decode_len]: generated tokens, eos included, then padding (0).
    """
    prompt_is_prefix = _is_right_padded_prefix(batch.get("mask_input"), batch.get("mask_ar"))
    text = jnp.asarray(batch["text"], jnp.int32)
    mask_input = jnp.asarray(batch.get("mask_input", jnp.ones(text.shape)), bool)
    mask_ar = jnp.asarray(batch.get("mask_ar", jnp.zeros(text.shape)), jnp.int32)
    return _decode(
        params, batch["image"], text, mask_input, mask_ar, jax.random.PRNGKey(seed),
        model=model, max_decode_len=max_decode_len, sampler=sampler,
        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), eos_id=eos_id,
        cache_dtype=cache_dtype, prompt_is_prefix=prompt_is_prefix,
    )


def _is_right_padded_prefix(mask_input, mask_ar) -> bool:
    """Whether every prompt is all prefix (mask_ar 0) with its padding at the end.

    Such a prefill's mask is just each row's length, which the fused attention kernels take
    natively. Decided on the host, so it must not depend on other processes' rows: with
    several processes (or inside a trace) the general mask is kept.
    """
    if jax.process_count() > 1:
        return False
    try:
        if mask_ar is not None and np.asarray(mask_ar).any():
            return False
        valid = None if mask_input is None else np.asarray(mask_input).astype(bool)
    except jax.errors.TracerArrayConversionError:  # decode() called inside jit
        return False
    # Right padding: no valid token after an invalid one.
    return valid is None or bool(np.all(valid[:, 1:] <= valid[:, :-1]))
