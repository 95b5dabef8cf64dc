"""The loss and the pure train step.

    update_fn = make_update_fn(model, opt, loss_len=16, grad_accum_steps=1)
    train_state, measurements = jax.jit(update_fn, donate_argnums=(0,))(train_state, rng, batch)

``train_state = {"params": nested params, "opt": optax state of the trainable params}``, plus
``"loss_scale": {"scale", "good_steps"}`` in fp16 mode. The step number lives in the optimizer
state (`get_step`). Frozen parameters pass through the step untouched (bit for bit).

Batch layout (pg_jax.data.input_pipeline): text int32[B, L+1] = ``[bos] question "\\n" answer
[eos] pad``; the model reads ``text[:, :-1]`` and is scored on ``text[:, 1:]`` where
``mask_loss[:, 1:]`` is set (answer and eos only).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from pg_jax import optim
from pg_jax.models import paligemma

# Dynamic loss scaling (fp16): grow the scale after this many finite steps, halve on overflow.
LOSS_SCALE_PERIOD = 200


def get_step(opt_state) -> jax.Array:
    """The number of updates applied so far, read from the optimizer state (int32 scalar)."""
    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
    states = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_sched) if is_sched(s)]
    return states[0].count


def loss_positions(mask: jax.Array, loss_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first `loss_len` positions where `mask` is set, per row.

    Args:
      mask: bool/int[B, T], 1 where the loss is taken.
      loss_len: P, how many positions to keep (static).

    Returns:
      (idx int32[B, P] positions, valid bool[B, P], dropped int32[] positions beyond P).
    """
    mask = mask.astype(bool)
    # A stable argsort of "not masked" lists masked positions first, in order.
    idx = jnp.argsort(~mask, axis=1, stable=True)[:, :loss_len].astype(jnp.int32)
    valid = jnp.take_along_axis(mask, idx, axis=1)
    dropped = jnp.sum(mask) - jnp.sum(valid)
    return idx, valid, dropped


def answer_nll(params: dict, batch: dict, *, model: paligemma.Model, loss_len: int,
               rngs: dict | None = None):
    """Per-example summed negative log-likelihood of the answer tokens (teacher forcing).

    The one definition of the answer loss: the train step's `loss_fn` and the perplexity
    evaluator (``pg_jax.predict_fns`` "answer_nll") both reduce it.

    Args:
      params: nested model params.
      batch: image float[B, R, R, 3], text int32[B, L+1], mask_ar, mask_loss, mask_input.
      model: the PaliGemma model.
      loss_len: logits are computed at this many answer positions per example only.
      rngs: flax rngs for the forward pass ({"dropout": key} in training with LoRA dropout;
        None: deterministic).

    Returns:
      (nll float32[B] summed over scored tokens, tokens int32[B] scored, dropped int32[]
      answer positions beyond loss_len).
    """
    text = batch["text"]
    inputs, targets = text[:, :-1], text[:, 1:]
    idx, valid, dropped = loss_positions(batch["mask_loss"][:, 1:], loss_len)
    logits, _ = model.apply(
        {"params": params},
        batch["image"],
        inputs,
        batch["mask_ar"][:, :-1],
        input_mask=batch["mask_input"][:, :-1].astype(bool),
        logits_at=idx,
        rngs=rngs,
    )
    # Logits are float32 whatever the compute dtype (the model casts before the tied head).
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(targets, idx, axis=1)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * valid, axis=1), jnp.sum(valid, axis=1), dropped


def loss_fn(params: dict, batch: dict, *, model: paligemma.Model, loss_len: int,
            rngs: dict | None = None):
    """Masked next-token cross entropy on the answer tokens, big_vision's normalisation.

    Each example's loss is the mean over its answer tokens; the batch loss is the mean over
    examples (so equal micro-batches average to the full batch's loss exactly).

    Args:
      params, batch, model, loss_len, rngs: as in `answer_nll`.

    Returns:
      (loss float32[], aux dict with "tokens" and "dropped" int32 counts).
    """
    nll, tokens, dropped = answer_nll(params, batch, model=model, loss_len=loss_len, rngs=rngs)
    per_example = nll / jnp.maximum(tokens, 1)
    return jnp.mean(per_example), {"tokens": jnp.sum(tokens), "dropped": dropped}


def compile_train_step(model, opt, plan, rng, batch, *, loss_len: int, grad_accum_steps: int):
    """The train step compiled for ``plan``'s abstract state (``pg_jax.state.plan``), from
    shapes only: the state is donated and comes out with the plan's shardings."""
    replicated = jax.sharding.NamedSharding(rng.sharding.mesh, jax.sharding.PartitionSpec())
    update_fn = make_update_fn(model, opt, loss_len=loss_len, grad_accum_steps=grad_accum_steps)
    jitted = jax.jit(update_fn, donate_argnums=(0,), out_shardings=(plan.shardings, replicated))
    return jitted.lower(plan.abstract, rng, batch).compile(compiler_options())


def compiler_options() -> dict:
    """XLA options for compiling the train step: ``jitted.lower(...).compile(compiler_options=...)``.

    On GPUs, matmuls go to cuBLAS only: XLA's Triton GEMMs (autotuned against cuBLAS on every
    compile) made the PaliGemma 1 3B step 1.2% slower at 224/32 on an H100 and its compile
    43 s instead of 8 s (BENCHMARKS.md). ``XLA_FLAGS`` naming the option overrides this.
    """
    if jax.default_backend() != "gpu" or "xla_gpu_enable_triton_gemm" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return {}
    return {"xla_gpu_enable_triton_gemm": False}


def _l2(tree) -> jax.Array:
    return optax.global_norm(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree))


def make_update_fn(
    model: paligemma.Model,
    opt: optim.Optimizer,
    *,
    loss_len: int,
    grad_accum_steps: int = 1,
) -> Callable:
    """Builds the pure train step.

    Args:
      model: the PaliGemma model.
      opt: from `optim.make`; its `trainable` keys are differentiated, the rest pass through.
      loss_len: answer positions scored per example (see `loss_fn`).
      grad_accum_steps: k; the batch is split into k equal micro-batches whose gradients are
        averaged in a scan, so activations are those of one micro-batch.

    Returns:
      ``update_fn(train_state, rng, batch) -> (train_state, measurements)``.
    """
    k = grad_accum_steps
    # The only randomness in training is LoRA dropout; without it the step ignores its rng.
    dropout = bool(model.lora and model.lora.get("dropout", 0.0))

    def grads_of(trainable, frozen, batch, scale, rng):
        rngs = {"dropout": rng} if dropout else None

        def scaled_loss(tr):
            loss, aux = loss_fn(optim.merge(tr, frozen), batch, model=model, loss_len=loss_len,
                                rngs=rngs)
            return loss * scale, (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(trainable)
        return loss, aux, grads

    def accumulated(trainable, frozen, batch, scale, rng):
        if k == 1:
            return grads_of(trainable, frozen, batch, scale, rng)
        b = batch["text"].shape[0]
        if b % k:
            raise ValueError(f"batch {b} is not divisible by grad_accum_steps {k}")
        # Row j*k + i goes to micro-batch i: each device keeps its own rows (no reshuffle).
        micro = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1), batch
        )
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)

        def body(carry, xs):
            mb, i = xs
            loss_sum, tok, drop, g_sum = carry
            loss, aux, g = grads_of(trainable, frozen, mb, scale, jax.random.fold_in(rng, i))
            g_sum = jax.tree_util.tree_map(lambda a, x: a + x.astype(jnp.float32), g_sum, g)
            return (
                loss_sum + loss,
                tok + aux["tokens"],
                drop + aux["dropped"],
                g_sum,
            ), None

        init = (
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            zeros,
        )
        (loss_sum, tok, drop, g_sum), _ = jax.lax.scan(body, init, (micro, jnp.arange(k)))
        grads = jax.tree_util.tree_map(lambda g, p: (g / k).astype(p.dtype), g_sum, trainable)
        return loss_sum / k, {"tokens": tok, "dropped": drop}, grads

    def update_fn(train_state, rng, batch):
        params, opt_state = train_state["params"], train_state["opt"]
        trainable, frozen = optim.split(params, opt.trainable)
        step = get_step(opt_state)
        # The loop passes one key for the run: each step's masks come from it and the step
        # number, so a resumed run draws the masks the uninterrupted one would have.
        rng = jax.random.fold_in(rng, step)
        ls = train_state.get("loss_scale")
        scale = ls["scale"] if ls is not None else jnp.ones((), jnp.float32)

        loss, aux, grads = accumulated(trainable, frozen, batch, scale, rng)
        grads = jax.tree_util.tree_map(lambda g: g / scale.astype(g.dtype), grads)
        updates, new_opt = opt.tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        # The norms below read the results once written. Left to fuse with the Adam update,
        # they made it one reduction kernel per weight, at a third of memory bandwidth (2.0 ms
        # per step for the q weights of PaliGemma 1 3B on an H100, ~0.6 ms as a plain update).
        new_trainable, updates = jax.lax.optimization_barrier((new_trainable, updates))

        new_state = dict(train_state)
        measurements = {
            "training_loss": loss,
            "l2_grads": _l2(grads),
            "l2_params": _l2(new_trainable),
            "l2_updates": _l2(updates),
            "answer_tokens": aux["tokens"],
            "answer_tokens_dropped": aux["dropped"],
        }
        for name, fn in opt.lr_fns.items():
            key = "lr" if len(opt.lr_fns) == 1 else f"lr/{name}"
            measurements[key] = fn(step)
        if ls is not None:
            # fp16: an overflowing step is skipped (state kept) and the scale halved.
            finite = jnp.isfinite(measurements["l2_grads"])
            keep = lambda new, old: jax.tree_util.tree_map(
                lambda n, o: jnp.where(finite, n, o), new, old
            )
            new_trainable, new_opt = (
                keep(new_trainable, trainable),
                keep(new_opt, opt_state),
            )
            good = jnp.where(finite, ls["good_steps"] + 1, 0)
            grow = good >= LOSS_SCALE_PERIOD
            new_scale = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
            new_state["loss_scale"] = {
                "scale": new_scale,
                "good_steps": jnp.where(grow, 0, good),
            }
            measurements.update(loss_scale=scale, skipped=(~finite).astype(jnp.int32))
        new_state["params"] = optim.merge(new_trainable, frozen)
        new_state["opt"] = new_opt
        return new_state, measurements

    return update_fn


def init_loss_scale(initial: float = 2.0**15) -> dict:
    """The fp16 dynamic loss-scale state."""
    return {
        "scale": jnp.asarray(initial, jnp.float32),
        "good_steps": jnp.zeros((), jnp.int32),
    }
