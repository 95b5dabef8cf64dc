"""What ``auto`` picks on a device: the compute dtype and the attention implementation.

Each choice is a function of one device, so that it can be tested with a fake: anything with
jax's ``Device`` attributes ``platform`` ("cpu", "gpu", "tpu"), ``device_kind`` and, on
NVIDIA GPUs, ``compute_capability`` (a string such as "7.5").
"""

import functools
from typing import NamedTuple

# bfloat16 arithmetic needs Ampere (8.0) or later; Kaggle's T4 is 7.5, its P100 6.0.
BFLOAT16_MIN_CAPABILITY = 8.0
# jax's cuDNN fused attention runs on Ampere (8.0) and later.
CUDNN_ATTENTION_MIN_CAPABILITY = 8.0
# FP8 matrix units (frozen_dtype=float8): Ada (8.9: L4) and Hopper (9.0: H100, H200).
FP8_MIN_CAPABILITY = 8.9
# pg_jax.models.flash_attention's Triton kernel, where auto picks it (bfloat16, Gemma's heads):
# measured on an H100 and an H200 (9.0); Ampere (8.0) has the same bf16 matrix instructions.
PALLAS_ATTENTION_MIN_CAPABILITY = 8.0


class Choice(NamedTuple):
    """A resolved setting and why it was chosen (one phrase, for the logs)."""

    value: str
    why: str


def compute_capability(device) -> float | None:
    """An NVIDIA GPU's compute capability (7.5 for a T4); None on other devices."""
    capability = getattr(device, "compute_capability", None)
    return None if capability is None else float(capability)


def compute_dtype(requested: str, device) -> Choice:
    """The compute dtype for ``requested`` ("auto" or a dtype name) on ``device``.

    auto: bfloat16 on TPUs and on GPUs that have it, float16 on GPUs without it (the trainer
    then uses dynamic loss scaling), float32 on CPUs (XLA's CPU backend computes bfloat16
    products in float32 anyway, so a lower precision only loses accuracy there).
    """
    if requested != "auto":
        return Choice(requested, "as configured")
    if device.platform == "tpu":
        return Choice("bfloat16", f"auto: {device.device_kind}")
    if device.platform == "gpu":
        capability = compute_capability(device)
        if capability is not None and capability < BFLOAT16_MIN_CAPABILITY:
            return Choice("float16", f"auto: {device.device_kind} has no bfloat16")
        return Choice("bfloat16", f"auto: {device.device_kind}")
    return Choice("float32", f"auto: float32 on {device.platform}")


def attention_implementation(requested: str, device, *, dtype, head_dim: int,
                             softcap: float = 0.0) -> str:
    """The attention implementation for ``requested`` (see pg_jax.models.attention).

    auto, on a bfloat16 GPU of compute capability 8.0 or later: the Pallas forward kernel
    (pg_jax.models.flash_attention) where it tiles ``head_dim`` (powers of two: every Gemma
    LLM's heads), with or without a logit soft-cap; it beats cuDNN's kernel on Gemma 1's
    multi-query heads and is the only fused one that takes Gemma 2's soft-cap. Other heads
    (SigLIP's 72-wide ones) take cuDNN's fused kernel where it runs (8.0 or later, bfloat16 or
    float16, an installed cuDNN that jax can use, no soft-cap). Else the plain einsums, which
    run everywhere.
    """
    return attention_choice(requested, device, dtype=dtype, head_dim=head_dim,
                            softcap=softcap).value


def attention_choice(requested: str, device, *, dtype, head_dim: int,
                     softcap: float = 0.0) -> Choice:
    """``attention_implementation`` with the reason, for the logs."""
    import jax.numpy as jnp

    from pg_jax.models import flash_attention  # jax only; imported late like jnp above

    if requested != "auto":
        return Choice(requested, "as configured")
    capability = compute_capability(device)
    dtype_name = jnp.dtype(dtype).name
    if (dtype_name == "bfloat16" and capability is not None
            and capability >= PALLAS_ATTENTION_MIN_CAPABILITY
            and flash_attention.supports(head_dim)):
        return Choice("pallas", f"auto: fused kernel for {head_dim}-wide heads "
                                f"on {device.device_kind}")
    if softcap:
        return Choice("einsum", f"auto: a logit soft-cap (no cuDNN), "
                                f"{dtype_name} on {device.device_kind}")
    if dtype_name not in ("bfloat16", "float16") or device.platform != "gpu":
        return Choice("einsum", f"auto: {dtype_name} on {device.platform}")
    if capability is None or capability < CUDNN_ATTENTION_MIN_CAPABILITY:
        return Choice("einsum", f"auto: no cuDNN attention on {device.device_kind}")
    if not cudnn_attention_available(device.device_kind):
        return Choice("einsum", "auto: jax's cuDNN attention does not compile here")
    return Choice("cudnn", f"auto: {device.device_kind}")


def describe(dtype: str, attention: str, device, model_cfg: dict) -> str:
    """What the configured ``dtype`` and ``attention`` ("auto" or not) resolve to on ``device``
    for the model ``model_cfg`` ({"img": ..., "llm": ...}), with why: the trainer's log line.

    The towers' heads differ in width (SigLIP's are 72 wide, Gemma's 256 or 128) and only the
    LLM may soft-cap its logits, so their attention implementations may differ; both are
    named then.
    """
    compute = compute_dtype(dtype, device)
    img, llm_cfg = model_cfg["img"], model_cfg["llm"]
    image = attention_choice(attention, device, dtype=compute.value,
                             head_dim=img["width"] // img["num_heads"])
    llm = attention_choice(attention, device, dtype=compute.value, head_dim=llm_cfg["head_dim"],
                           softcap=llm_cfg.get("attn_logits_softcap", 0.0))
    if image == llm:
        shown = f"{llm.value} ({llm.why})"
    else:
        shown = (f"{image.value} in the image tower ({image.why}), "
                 f"{llm.value} in the LLM ({llm.why})")
    return f"compute {compute.value} ({compute.why}), attention {shown}"


@functools.cache
def cudnn_attention_available(device_kind: str) -> bool:
    """Whether jax's cuDNN fused attention compiles here (jax checks the cuDNN version)."""
    del device_kind  # the cache key: one compile per kind of GPU
    import jax
    import jax.numpy as jnp

    q = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
    attend = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
    try:
        jax.jit(attend).lower(q, q, q).compile()
    except Exception:  # noqa: BLE001 - any refusal (no cuDNN, too old, no GPU) means "no"
        return False
    return True


# How frozen weights can be stored: as a float dtype, or in 8 bits (pg_jax.models.quant).
FROZEN_DTYPES = ("float32", "bfloat16", "float16", "int8", "float8")


def resolve_dtypes(config, device) -> tuple[str, str, bool]:
    """(compute dtype, frozen storage dtype, dynamic loss scaling) from the config's "auto"s.

    Args:
      config: the training config (dtype, frozen_dtype, loss_scale).
      device: the device the run computes on.
    """
    dtype = compute_dtype(config.dtype, device).value
    frozen = config.frozen_dtype if config.frozen_dtype != "auto" else dtype
    if frozen not in FROZEN_DTYPES:
        raise ValueError(f"frozen_dtype must be auto or one of {', '.join(FROZEN_DTYPES)}, "
                         f"got {config.frozen_dtype!r}")
    capability = compute_capability(device)
    if frozen == "float8" and capability is not None and capability < FP8_MIN_CAPABILITY:
        raise ValueError(
            f"frozen_dtype=float8 multiplies on FP8 matrix units, which this GPU "
            f"({device.device_kind}, compute capability {capability}) does not have (8.9+: L4, "
            f"H100, H200); frozen_dtype=int8 stores the frozen weights in 8 bits as well")
    scale = config.loss_scale == "dynamic" or (config.loss_scale == "auto" and dtype == "float16")
    return dtype, frozen, scale
