"""The train state: its shapes and shardings first (no memory), then its arrays.

Used by the trainer (`pg_jax.train`) and by ``scripts/bench_train_step.py``, so the benchmark
times exactly the state the trainer trains::

    plan = state.plan(model, opt, mesh, strategy, frozen_dtype="bfloat16", loss_scale=False)
    compiled = jitted.lower(plan.abstract, rng, batch).compile()   # fit check: no arrays yet
    train_state = state.materialize(plan, model, init_path=..., seed=0)

A train state is ``{"params": nested params, "opt": optimizer state over the trainable leaves
(flat), "loss_scale": fp16 loss-scale state (only with dynamic loss scaling)}``. Trainable
parameters are float32 masters; frozen ones are stored in ``frozen_dtype`` and get no optimizer
state.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pg_jax import optim, sharding
from pg_jax import step as step_lib
from pg_jax.models import loader, lora, paligemma, quant


@dataclasses.dataclass(frozen=True)
class StatePlan:
    """Shapes, dtypes and shardings of a train state, before any array exists.

    Attributes:
      param_shapes: flat {key: ShapeDtypeStruct} in the stored dtypes.
      param_shardings: flat {key: NamedSharding}.
      opt: the optimizer the state is for.
      abstract: the whole train state as ShapeDtypeStructs with shardings (a ``lower`` input).
      shardings: the same tree of shardings (``out_shardings`` of the train step).
    """

    param_shapes: dict
    param_shardings: dict
    opt: optim.Optimizer
    abstract: dict
    shardings: dict


def plan(
    model: paligemma.Model,
    opt: optim.Optimizer,
    mesh: jax.sharding.Mesh,
    strategy,
    *,
    frozen_dtype: str,
    loss_scale: bool,
) -> StatePlan:
    """Everything about the train state that shapes alone tell.

    Args:
      model: the model.
      opt: `optim.make(...)` for the model's parameters.
      mesh: the device mesh.
      strategy: ``config.sharding_strategy`` (regex -> rule pairs, see `pg_jax.sharding`).
      frozen_dtype: storage dtype of the frozen parameters; "int8" or "float8": the frozen
        matrices of attention and MLP layers and the token embedding as `quant.QArray` (8-bit
        values and per-channel scales; float8 also multiplies in FP8), the other frozen
        parameters in the model's compute dtype.
      loss_scale: whether the state holds fp16 dynamic loss-scale state.
    """
    trainable = set(opt.trainable)
    shapes = loader.param_shapes(model)
    lora.check_targets(model.lora, shapes)
    param_shapes = {k: stored_shape(k, v.shape, k in trainable, frozen_dtype, model)
                    for k, v in shapes.items()}
    param_shardings = sharding.infer_sharding(param_shapes, strategy, mesh)
    opt_shapes = jax.eval_shape(opt.tx.init, {k: param_shapes[k] for k in opt.trainable})
    opt_shardings = sharding.infer_sharding(opt_shapes, strategy, mesh)
    shardings = {"params": optim.unflatten(param_shardings), "opt": opt_shardings}
    shapes = {"params": optim.unflatten(param_shapes), "opt": opt_shapes}
    if loss_scale:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        shapes["loss_scale"] = jax.eval_shape(step_lib.init_loss_scale)
        shardings["loss_scale"] = jax.tree.map(lambda _: replicated, shapes["loss_scale"])
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return StatePlan(param_shapes, param_shardings, opt, abstract, shardings)


def stored_shape(key: str, shape, trainable: bool, frozen_dtype: str, model):
    """How a parameter is stored in the train state (a ShapeDtypeStruct, or a QArray of them)."""
    if trainable:
        return jax.ShapeDtypeStruct(shape, jnp.float32)
    if frozen_dtype in quant.FORMATS:
        if key in quant.QUANTIZABLE:
            return quant.abstract(key, shape, frozen_dtype)
        return jax.ShapeDtypeStruct(shape, jnp.dtype(model.llm.get("dtype", "float32")))
    return jax.ShapeDtypeStruct(shape, jnp.dtype(frozen_dtype))


def to_stored(key: str, value, stored):
    """A loaded or initialised parameter in its stored form (see `stored_shape`)."""
    if quant.is_quantized(stored):
        return quant.quantize(key, value, quant.format_of(stored))
    return value if value.dtype == stored.dtype else value.astype(stored.dtype)



def materialize(p: StatePlan, model: paligemma.Model, *, init_path: str = "", seed: int = 0,
                model_cfg: dict | None = None, init_missing: tuple[str, ...] = (),
                adapter: str | None = None) -> dict:
    """The train state's arrays, created straight into their shardings.

    What the checkpoint holds is loaded; the rest (all of it without ``init_path``; with it,
    the ``init_missing`` parameters it lacks, e.g. new LoRA factors) is initialised by one
    jitted ``model.init`` that computes only those parameters.

    Args:
      p: the `plan`.
      model: the model (its init makes what is not loaded).
      init_path: a checkpoint to load parameters from (big_vision .npz or HF directory).
      seed: random init seed.
      model_cfg: the architecture `init_path` must hold (default: whatever it holds).
      init_missing: regexes of parameters `init_path` may lack (see `loader.load`).
      adapter: a PEFT LoRA adapter directory whose factors are loaded (see `loader.load`).
    """
    flat = {}
    if init_path:
        _, params = loader.load(
            init_path, model_cfg=model_cfg,
            # An int8 weight is read as stored (sharded as its values), then quantized.
            shardings=lambda k, s: getattr(p.param_shardings[k], "q", p.param_shardings[k]),
            init_missing=init_missing, adapter=adapter,
        )
        # Cast (or quantize) leaf by leaf: one leaf's second copy at a time, never a whole
        # second model.
        flat = {}
        for k, v in optim.flatten(params).items():
            stored = p.param_shapes[k]
            flat[k] = (v if not quant.is_quantized(stored) and v.dtype == stored.dtype
                       else jax.jit(functools.partial(to_stored, k, stored=stored),
                                    out_shardings=p.param_shardings[k])(v))
        del params
    missing = sorted(set(p.param_shapes) - set(flat))
    if missing:
        res = model.img["image_size"]
        dummy = (jnp.zeros((1, res, res, 3)), jnp.zeros((1, 2), jnp.int32),
                 jnp.zeros((1, 2), jnp.int32))

        def init(rng):
            # Only the missing leaves are outputs: XLA drops the rest of the init. Cast inside
            # the jit: no float32 copy of frozen weights.
            every = optim.flatten(model.init(rng, *dummy)["params"])
            return {k: to_stored(k, every[k], p.param_shapes[k]) for k in missing}

        shardings = {k: p.param_shardings[k] for k in missing}
        flat.update(jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed)))
    return _with_optimizer_state(p, flat)


def _with_optimizer_state(p: StatePlan, flat: dict) -> dict:
    """The train state around the params: optimizer state of the trainable ones, loss scale."""
    opt_state = jax.jit(p.opt.tx.init, out_shardings=p.shardings["opt"])(
        {k: flat[k] for k in p.opt.trainable}
    )
    state = {"params": optim.unflatten(flat), "opt": opt_state}
    if "loss_scale" in p.abstract:
        state["loss_scale"] = jax.device_put(step_lib.init_loss_scale(),
                                             p.shardings["loss_scale"])
    return state


def materialize_random(p: StatePlan, *, seed: int = 0, std: float = 0.02) -> dict:
    """A train state of the plan's exact dtypes and shardings, with N(0, std) weights.

    For benchmarks: it is made one leaf at a time, as loading a checkpoint is, so the device's
    measured peak memory afterwards is the train step's. (``model.init`` of every weight in
    one program keeps float32 copies alive, which at PaliGemma 2 10B doubled the peak.)
    LoRA ``B`` factors start at zero, as in `materialize`.
    """
    flat, compiled = {}, {}
    for i, (k, s) in enumerate(sorted(p.param_shapes.items())):
        sh = p.param_shardings[k]
        sig = (k if quant.is_quantized(s) else s.shape, s.dtype, sh)
        if sig not in compiled:  # one program per distinct leaf
            compiled[sig] = jax.jit(functools.partial(_random_leaf, k, s, std), out_shardings=sh)
        if k.endswith("_lora_b"):
            flat[k] = jax.jit(lambda s=s: jnp.zeros(s.shape, s.dtype), out_shardings=sh)()
        else:
            flat[k] = compiled[sig](jax.random.PRNGKey(seed * 100_003 + i))
    return _with_optimizer_state(p, flat)


def _random_leaf(key: str, stored, std: float, rng):
    """N(0, std) values in the stored form; a stacked int8 weight one layer at a time, so that
    no float32 copy of all its layers exists."""
    stacked = key in lora.LAYOUTS and stored.ndim > len(lora.LAYOUTS[key].weight)
    if quant.is_quantized(stored) and stacked:
        fmt = quant.format_of(stored)
        one = lambda r: quant.quantize(key, std * jax.random.normal(r, stored.shape[1:]), fmt)  # noqa: E731
        return jax.lax.map(one, jax.random.split(rng, stored.shape[0]))
    return to_stored(key, std * jax.random.normal(rng, stored.shape), stored)
