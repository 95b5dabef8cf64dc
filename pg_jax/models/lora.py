"""LoRA: trainable low-rank factors beside frozen weights.

A targeted weight ``W`` gets two factors, and its layer computes ``x W + s (x A) B`` with
``s = alpha / rank``. ``B`` starts at zero, so step 0 is exactly the base model. The factors
live next to the weight, named after it: ``llm/layers/attn/q_einsum/w`` gets
``llm/layers/attn/q_einsum/w_lora_a`` and ``..._lora_b`` (stacked over layers like the weight).
The config (``paligemma.Model(lora=...)``)::

    lora = dict(rank=8, alpha=16.0, targets=TARGETS["attn"])   # regexes over weight names

Factor layouts. A weight's axes are split into *parts* (HF keeps them as separate matrices,
e.g. ``kv_einsum``'s k and v), *inputs* (contracted with the activation) and *outputs*;
``A`` is ``[parts, inputs, r]`` and ``B`` is ``[parts, r, outputs]``, each axis group in the
weight's own order. So ``q_einsum/w [N, D, H]`` gets ``A [D, r]``, ``B [r, N, H]``, and
``kv_einsum/w [2, K, D, H]`` gets ``A [2, D, r]``, ``B [2, r, K, H]``: one factor pair per HF
projection (k_proj, v_proj), which is what a PEFT adapter holds (`pg_jax.models.peft_io`).

Decoding merges the factors into the weights once (`merge`), so a LoRA model decodes as fast
as a plain one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

_ATTN = r"llm/layers/attn/(q_einsum|kv_einsum|qkv_einsum|attn_vec_einsum)/w"
_MLP = r"llm/layers/mlp/(gating_einsum|linear)"

_VIT = r"img/Transformer/encoderblock/(MultiHeadDotProductAttention_0/(query|key|value|out)|MlpBlock_0/Dense_[01])/kernel"

# Target presets for ``lora.targets`` (`configs/docvqa.py:lora_targets=...`).
TARGETS = {
    # The LLM's attention projections (q, k, v and o in HF's names).
    "attn": (_ATTN,),
    # Attention and the MLP (HF: q, k, v, o, gate, up, down): the common PEFT recipe.
    "attn_mlp": (_ATTN, _MLP),
    # Those and every image-encoder block's attention and MLP (HF: q, k, v, out, fc1, fc2).
    "all": (_ATTN, _MLP, _VIT),
}

SUFFIXES = ("_lora_a", "_lora_b")
FACTOR_PATTERN = r".*_lora_[ab]"


@dataclasses.dataclass(frozen=True)
class Layout:
    """A weight's axes as letters (layer axis excluded): ``parts + inputs + outputs``.

    Attributes:
      weight: the weight's axes in storage order, e.g. "SKDH" for kv_einsum's [2, K, D, H].
      parts: leading axes that index separate projections ("S"), or "".
      inputs: the axes contracted with the activation, in weight order.
    """

    weight: str
    parts: str
    inputs: str

    @property
    def outputs(self) -> str:
        return "".join(c for c in self.weight if c not in self.parts + self.inputs)

    @property
    def a(self) -> str:
        return self.parts + self.inputs + "r"

    @property
    def b(self) -> str:
        return self.parts + "r" + self.outputs


_BLOCK = "img/Transformer/encoderblock/"

# Every weight LoRA can target, by its (stacked) name.
LAYOUTS = {
    "llm/layers/attn/q_einsum/w": Layout("NDH", "", "D"),
    "llm/layers/attn/kv_einsum/w": Layout("SKDH", "S", "D"),
    "llm/layers/attn/qkv_einsum/w": Layout("SNDH", "S", "D"),
    "llm/layers/attn/attn_vec_einsum/w": Layout("NHD", "", "NH"),
    "llm/layers/mlp/gating_einsum": Layout("SDF", "S", "D"),
    "llm/layers/mlp/linear": Layout("FD", "", "F"),
    **{f"{_BLOCK}MultiHeadDotProductAttention_0/{n}/kernel": Layout("DNH", "", "D")
       for n in ("query", "key", "value")},
    f"{_BLOCK}MultiHeadDotProductAttention_0/out/kernel": Layout("NHD", "", "NH"),
    f"{_BLOCK}MlpBlock_0/Dense_0/kernel": Layout("DF", "", "D"),
    f"{_BLOCK}MlpBlock_0/Dense_1/kernel": Layout("FD", "", "F"),
}


class LoraError(ValueError):
    """A LoRA config or adapter that does not fit the model; the message names the key."""


def normalize(config: Mapping | None) -> flax.core.FrozenDict | None:
    """A hashable LoRA config (targets as a tuple), or None for no LoRA; checks its fields."""
    if not config:
        return None
    config = dict(config)
    unknown = set(config) - {"rank", "alpha", "targets", "dropout"}
    if unknown:
        raise LoraError(f"lora: unknown field(s) {sorted(unknown)}; "
                        "known: rank, alpha, targets, dropout")
    rank = int(config.get("rank", 0))
    if rank <= 0:
        raise LoraError(f"lora.rank must be a positive integer, got {config.get('rank')!r}")
    dropout = float(config.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise LoraError(f"lora.dropout must be in [0, 1), got {config.get('dropout')!r}")
    targets = config.get("targets", TARGETS["attn"])
    if isinstance(targets, str):  # a preset name or one regex
        targets = TARGETS.get(targets, (targets,))
    return flax.core.FrozenDict(
        rank=rank, alpha=float(config.get("alpha", rank)), targets=tuple(targets), dropout=dropout
    )


def from_config(section: Mapping | None) -> tuple[dict | None, str]:
    """``config.lora`` -> (the model's LoRA config as a plain dict, or None; adapter path).

    ``adapter`` (a PEFT adapter directory to start the factors from) is the run's, not the
    model's, so it is split off.
    """
    if not section:
        return None, ""
    section = dict(section)
    adapter = section.pop("adapter", "") or ""
    cfg = normalize(section)
    return {**cfg, "targets": list(cfg["targets"])}, adapter


def scale(config: Mapping) -> float:
    return config["alpha"] / config["rank"]


def weight_key(module: nn.Module, name: str) -> str:
    """The stacked name of a module's weight: ``layers_3`` -> ``layers``."""
    return re.sub(r"/layers_\d+/", "/layers/", "/".join(module.path) + "/" + name)


def is_target(key: str, config: Mapping | None) -> bool:
    return bool(config) and any(re.fullmatch(t, key) for t in config["targets"])


def factor_shapes(layout: Layout, weight_shape, rank: int) -> tuple[tuple, tuple]:
    """(A shape, B shape) for one layer's weight."""
    size = dict(zip(layout.weight, weight_shape, strict=True), r=rank)
    return tuple(size[c] for c in layout.a), tuple(size[c] for c in layout.b)


def delta(module: nn.Module, name: str, x: jax.Array, weight_shape, config) -> jax.Array | None:
    """``s (x A) B`` for the module's weight ``name``, or None if LoRA does not target it.

    Declares the factors as params of ``module``. ``x`` ends with the weight's input axes; the
    result is ``[parts, ..., outputs]`` (no parts axis when the weight has none).

    With ``config["dropout"]`` > 0 and a "dropout" rng (the train step passes one; decoding and
    evaluation do not, so they are deterministic), the factors see inverted dropout of ``x``,
    as PEFT's ``lora_B(lora_A(dropout(x)))``: one mask per part, since PEFT's separate gate/up
    and k/v modules draw their own.
    """
    key = weight_key(module, name)
    if not is_target(key, config):
        return None
    layout = LAYOUTS[key]
    a_shape, b_shape = factor_shapes(layout, weight_shape, config["rank"])
    in_axes = tuple(range(len(layout.parts), len(layout.parts) + len(layout.inputs)))
    # PEFT's default: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0.
    a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=in_axes,
                                              out_axis=-1)
    a = module.param(name + "_lora_a", a_init, a_shape)
    b = module.param(name + "_lora_b", nn.initializers.zeros_init(), b_shape)
    p, i, o = layout.parts, layout.inputs, layout.outputs
    rate = config.get("dropout", 0.0)
    if rate and module.has_rng("dropout"):
        if p:
            x = jnp.broadcast_to(x, (a_shape[0], *x.shape))
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
        x = jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
        src = f"{p}...{i}"
    else:
        src = f"...{i}"
    xa = jnp.einsum(f"{src},{layout.a}->{p}...r", x, a.astype(x.dtype))
    y = jnp.einsum(f"{p}...r,{layout.b}->{p}...{o}", xa, b.astype(x.dtype))
    return y * jnp.asarray(scale(config), y.dtype)


def check_targets(config: Mapping | None, weight_keys) -> None:
    """Every target regex must match a weight LoRA can adapt; refuses the others by name."""
    if not config:
        return
    weight_keys = [k for k in weight_keys if not k.endswith(SUFFIXES)]
    adaptable = [k for k in weight_keys if k in LAYOUTS]
    for target in config["targets"]:
        hits = [k for k in weight_keys if re.fullmatch(target, k)]
        if not hits:
            raise LoraError(f"lora.targets: {target!r} matches no weight of this model; "
                            f"LoRA can adapt: {adaptable}")
        wrong = [k for k in hits if k not in LAYOUTS]
        if wrong:
            raise LoraError(f"lora.targets: {target!r} matches {wrong[:3]}, which LoRA cannot "
                            f"adapt; it can adapt: {adaptable}")


def has_factors(flat_keys) -> bool:
    return any(k.endswith(SUFFIXES) for k in flat_keys)


def merge_flat(flat: Mapping, config: Mapping, xp=jnp) -> dict:
    """``W + s A B`` for every factored weight of a flat params dict; the factors dropped.

    Works on stacked (``llm/layers/...``, leading layer axis) keys; ``xp`` is jnp or numpy.
    The merged weight keeps the stored weight's dtype; the product is computed in float32.
    """
    out = {k: v for k, v in flat.items() if not k.endswith(SUFFIXES)}
    for key, layout in LAYOUTS.items():
        if key + "_lora_a" not in flat:
            continue
        a, b, w = flat[key + "_lora_a"], flat[key + "_lora_b"], flat[key]
        stack = "L" if a.ndim == len(layout.a) + 1 else ""
        d = xp.einsum(f"{stack}{layout.a},{stack}{layout.b}->{stack}{layout.weight}",
                      xp.asarray(a, np.float32), xp.asarray(b, np.float32))
        out[key] = (xp.asarray(w, np.float32) + scale(config) * d).astype(w.dtype)
    return out


def merge(params: Mapping, config: Mapping | None) -> dict:
    """Nested params with the factors merged in (a no-op without LoRA)."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    if not config or not has_factors(flat):
        return params
    return flax.traverse_util.unflatten_dict(merge_flat(flat, config), sep="/")


# One compiled merge per (tree structure, config); decoding calls it once per evaluation.
merge_jit = jax.jit(merge, static_argnums=1)
