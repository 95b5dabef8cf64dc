"""The optimizer: which parameters train, with which schedule, and how they are updated.

Everything comes from the config (big_vision's ``optax.make`` semantics)::

    config.schedule = [                       # (regex, schedule or None); first match wins,
        ("llm/layers/attn/.*", dict(decay_type="cosine", warmup_percent=0.05)),
        (".*", None),                         # None: frozen. Every parameter must match.
    ]
    config.optax_name = "adam"                # adam | adamw | sgd | adafactor
    config.optax = dict(b2=0.999)             # keyword arguments of that optax transform
    config.lr = 1e-5; config.grad_clip_norm = 1.0
    config.wd = 1e-6; config.wd_mults = [(".*/kernel$", 1.0)]   # decoupled, NOT times lr

The update of a trainable parameter p with gradient g at step t is

    u = -sched(t) * (lr * opt(clip(g)) + wd * mult * p)

so ``wd`` is big_vision's decoupled weight decay: it follows the schedule's shape but is not
multiplied by the learning rate (``adamw`` instead gives optax's lr-coupled decay).

The transform works on the *trainable* parameters only, as a flat ``{"llm/...": array}`` dict:
frozen parameters get no gradient and no optimizer state (for PaliGemma 3B the embedding's Adam
state alone would be 2 GB). ``split``/``merge`` convert between the nested tree and that dict.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pg_jax.models import quant

# Named trainable sets for `configs/docvqa.py:freeze=...`.
PRESETS: dict[str, list[tuple[str, bool]]] = {
    # big_vision's T4 colab: only the LLM's attention weights (~170M of PG1 3B).
    "attn": [("llm/layers/attn/.*", True), (".*", False)],
    "full": [(".*", True)],
    "llm": [("llm/.*", True), (".*", False)],
    # Everything but the image encoder; its projection `img/head` trains with the LLM.
    "vit_frozen": [("img/head/.*", True), ("img/.*", False), (".*", True)],
    # LoRA factors only (config.lora says which weights get them; pg_jax.models.lora).
    "lora": [(r".*_lora_[ab]", True), (".*", False)],
}

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """What `make` returns.

    Attributes:
      tx: the optax transform over the flat dict of trainable parameters.
      trainable: sorted flat keys ("llm/layers/attn/q_einsum/w", ...) of trainable parameters.
      frozen: sorted flat keys of frozen parameters.
      lr_fns: {group regex: step -> effective learning rate}, for logging.
    """

    tx: optax.GradientTransformation
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    lr_fns: dict[str, Callable[[jax.Array], jax.Array]]


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested params -> {"img/embedding/kernel": leaf, ...} (big_vision's key names)."""
    out = {}
    # An int8 weight (quant.QArray: values and scales) is one parameter, one leaf.
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=quant.is_quantized)[0]:
        out["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`."""
    tree: dict = {}
    for key, leaf in flat.items():
        node = tree
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def split(params: Mapping, trainable: Sequence[str]) -> tuple[dict, dict]:
    """Nested params -> (flat trainable dict, flat frozen dict)."""
    flat, keys = flatten(params), set(trainable)
    return (
        {k: v for k, v in flat.items() if k in keys},
        {k: v for k, v in flat.items() if k not in keys},
    )


def merge(trainable: Mapping, frozen: Mapping) -> dict:
    """(flat trainable, flat frozen) -> nested params."""
    return unflatten({**frozen, **trainable})


def match_first(names: Sequence[str], rules: Sequence[tuple[str, Any]], what: str) -> dict:
    """{name: value of the first rule whose regex fully matches name}; every name must match.

    Args:
      names: flat parameter names.
      rules: (regex, value) pairs.
      what: the config field, for the error message.

    Returns:
      name -> value.
    """
    out, unmatched = {}, []
    for name in names:
        for pattern, value in rules:
            if re.fullmatch(pattern, name):
                out[name] = value
                break
        else:
            unmatched.append(name)
    if unmatched:
        raise ValueError(
            f"config.{what}: no rule matches {len(unmatched)} parameter(s), e.g. "
            f"{unmatched[:3]}; add a catch-all ('.*', ...) rule. Rules: {[r for r, _ in rules]}"
        )
    return out


def make_schedule(
    total_steps: int,
    *,
    base: float = 1.0,
    decay_type: str = "cosine",
    warmup_steps: int | None = None,
    warmup_percent: float | None = None,
    linear_end: float = 0.0,
    mult: float = 1.0,
) -> Callable:
    """Warm-up then cosine/linear/constant decay; a function of the (0-based) step.

    Args:
      total_steps: steps of the whole run.
      base: peak value (the schedule is multiplied by config.lr elsewhere; keep 1).
      decay_type: "cosine", "linear" or "constant".
      warmup_steps / warmup_percent: linear warm-up from 0; at most one of the two.
      linear_end: final value of the linear decay (relative to base).
      mult: per-group multiplier (big_vision's lr_mults).

    Returns:
      step -> float32 multiplier.
    """
    if warmup_steps is not None and warmup_percent is not None:
        raise ValueError("schedule: set warmup_steps or warmup_percent, not both")
    warmup = (
        warmup_steps if warmup_steps is not None else round((warmup_percent or 0.0) * total_steps)
    )
    if total_steps > 1 and warmup >= total_steps:
        raise ValueError(f"schedule: warmup ({warmup} steps) >= total_steps ({total_steps})")
    if decay_type not in ("cosine", "linear", "constant"):
        raise ValueError(f"schedule: unknown decay_type {decay_type!r}")

    def fn(step):
        # Step t's update uses the value at t + 1, so warm-up's first step is not 0.
        t = jnp.asarray(step, jnp.float32) + 1.0
        progress = jnp.clip((t - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        if decay_type == "cosine":
            v = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif decay_type == "linear":
            v = linear_end + (1.0 - linear_end) * (1.0 - progress)
        else:
            v = jnp.ones_like(progress)
        if warmup:
            v = v * jnp.minimum(1.0, t / warmup)
        return base * mult * v

    return fn


def _base_tx(name: str, kw: Mapping) -> optax.GradientTransformation:
    """The direction transform (no learning rate): Adam moments, momentum, factored RMS."""
    kw = dict(kw)
    if name in ("adam", "scale_by_adam"):
        return optax.scale_by_adam(**kw)
    if name == "adamw":
        # optax/torch AdamW: the decay is multiplied by the learning rate (unlike config.wd).
        wd = kw.pop("weight_decay", 1e-4)
        return optax.chain(optax.scale_by_adam(**kw), optax.add_decayed_weights(wd))
    if name == "sgd":
        momentum = kw.pop("momentum", None)
        return optax.trace(decay=momentum, **kw) if momentum else optax.identity()
    if name == "adafactor":
        return optax.scale_by_factored_rms(**kw)
    raise ValueError(f"config.optax_name={name!r}; known: {OPTIMIZERS}")


def make(config, params_shape: Mapping, total_steps: int) -> Optimizer:
    """Builds the optimizer from the config.

    Args:
      config: with schedule, optax_name, optax, lr, wd, wd_mults, grad_clip_norm.
      params_shape: nested params (arrays or ShapeDtypeStructs).
      total_steps: length of the run, for the schedules.

    Returns:
      An `Optimizer`; initialise with ``opt.tx.init(split(params, opt.trainable)[0])``.
    """
    names = sorted(flatten(params_shape))
    rules = config.schedule
    if isinstance(rules, (dict, Mapping)) or rules is None:
        rules = [(".*", rules)]  # One schedule for everything.
    rules = [(r, None if s is None else dict(s)) for r, s in rules]
    sched_of = match_first(names, rules, "schedule")
    trainable = tuple(n for n in names if sched_of[n] is not None)
    frozen = tuple(n for n in names if sched_of[n] is None)
    if not trainable:
        hint = ""
        if any("_lora_" in r for r, s in rules if s is not None):
            hint = " (the LoRA preset trains LoRA factors, and this model has none: set config.lora)"
        raise ValueError(f"config.schedule freezes every parameter; nothing would train{hint}")

    # One group per schedule rule that actually matched something trainable.
    group_of = {n: next(r for r, s in rules if re.fullmatch(r, n)) for n in trainable}
    groups = sorted(set(group_of.values()), key=[r for r, _ in rules].index)
    lr_fns, group_txs = {}, {}
    wd_of = match_first(trainable, list(config.wd_mults) + [(".*", 0.0)], "wd_mults")
    for g in groups:
        sched = make_schedule(total_steps, **dict(rules)[g])
        lr_fns[g] = lambda s, f=sched: config.lr * f(s)
        chain = [_base_tx(config.optax_name, config.optax), optax.scale(config.lr)]
        if config.wd:
            # Decoupled decay, added after the lr scaling: wd * mult * p, times the schedule only.
            chain.append(_decay_per_key({n: config.wd * wd_of[n] for n in trainable}))
        chain += [optax.scale_by_schedule(sched), optax.scale(-1.0)]
        group_txs[g] = optax.chain(*chain)

    # Clip over all trainable gradients together (a global norm), then per-group updates.
    labels = lambda p: {k: group_of[k] for k in p}
    tx = optax.multi_transform(group_txs, labels)
    if config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return Optimizer(tx=tx, trainable=trainable, frozen=frozen, lr_fns=lr_fns)


def _decay_per_key(rates: Mapping[str, float]) -> optax.GradientTransformation:
    """Adds ``rate[k] * param[k]`` to each flat-dict update (stateless)."""

    def update(updates, state, params):
        out = {
            k: u + rates[k] * params[k].astype(u.dtype) if rates[k] else u
            for k, u in updates.items()
        }
        return out, state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)
