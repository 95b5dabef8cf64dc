"""Times the jitted train step on random data (no TensorFlow, no checkpoint needed).

    python scripts/bench_train_step.py --variant pg1_3b --res 224 --batch 8 --freeze attn

Reports examples/s, MFU (REFERENCE.md section 8 counting, see pg_jax.accounting), the compiled
step's predicted memory and the device's measured peak. The setup matches the peer baseline of
REFERENCE.md section 8: 32 text tokens, loss on the last 8, trainable LLM attention, Adam.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

jax.config.update("jax_threefry_partitionable", True)

import jax.numpy as jnp
import ml_collections
import numpy as np

from pg_jax import accounting, optim, sharding
from pg_jax import step as step_lib
from pg_jax.models import loader, paligemma, variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--freeze", default="attn", choices=sorted(optim.PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--frozen_dtype", default="bfloat16")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention_impl", default="einsum")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()

    text_len, loss_len = 32, 8
    cfg = variants.get_config(  # tiny variants take the project tokenizer's vocabulary
        a.variant,
        res=a.res,
        dtype=a.dtype,
        remat_policy=a.remat,
        attention_impl=a.attention_impl,
    ).to_dict()
    model = paligemma.Model(**cfg)
    mesh = sharding.make_mesh([("data", -1)])
    shapes = loader.param_shapes(model)
    opt_cfg = ml_collections.ConfigDict(
        dict(  # noqa: C408
            schedule=[
                (r, {"decay_type": "cosine", "warmup_percent": 0.05} if t else None)
                for r, t in optim.PRESETS[a.freeze]
            ],
            optax_name="adam",
            optax={"b2": 0.999},
            lr=1e-5,
            wd=0.0,
            wd_mults=[],
            grad_clip_norm=1.0,
        )
    )
    opt = optim.make(opt_cfg, optim.unflatten(shapes), 1000)
    tr = set(opt.trainable)
    shapes = {
        k: jax.ShapeDtypeStruct(v.shape, jnp.float32 if k in tr else a.frozen_dtype)
        for k, v in shapes.items()
    }
    strategy = [(".*", 'fsdp(axis="data")')]
    p_sh = sharding.infer_sharding(shapes, strategy, mesh)

    # Random init straight into the target dtypes and shardings (no host copy of 3B params).
    def init(rng):
        dummy = (
            jnp.zeros((1, a.res, a.res, 3)),
            jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2), jnp.int32),
        )
        flat = optim.flatten(model.init(rng, *dummy)["params"])
        return {k: v.astype(shapes[k].dtype) for k, v in flat.items()}

    flat = jax.jit(init, out_shardings=p_sh)(jax.random.PRNGKey(0))
    tr_params = {k: flat[k] for k in opt.trainable}
    o_sh = sharding.infer_sharding(jax.eval_shape(opt.tx.init, tr_params), strategy, mesh)
    state = {
        "params": optim.unflatten(flat),
        "opt": jax.jit(opt.tx.init, out_shardings=o_sh)(tr_params),
    }
    del flat, tr_params
    print("Parameters:\n" + accounting.param_overview(shapes, opt.trainable))

    rng = np.random.default_rng(0)
    n = text_len + 1
    mask_loss = np.zeros((a.batch, n), np.int32)
    mask_loss[:, n - loss_len :] = 1
    batch = {
        "image": rng.uniform(-1, 1, (a.batch, a.res, a.res, 3)).astype(np.float32),
        "text": rng.integers(3, cfg["llm"]["vocab_size"], (a.batch, n)).astype(np.int32),
        "mask_ar": (np.arange(n) >= n - loss_len).astype(np.int32)[None].repeat(a.batch, 0),
        "mask_loss": mask_loss,
        "mask_input": np.ones((a.batch, n), np.int32),
    }
    batch = sharding.global_batch(batch, mesh)
    fn = jax.jit(
        step_lib.make_update_fn(model, opt, loss_len=loss_len, grad_accum_steps=a.accum),
        donate_argnums=(0,),
    )
    t = time.time()
    compiled = fn.lower(state, jax.random.PRNGKey(0), batch).compile()
    report, _, _ = accounting.memory_report(compiled, jax.devices()[0])
    print(f"compile {time.time() - t:.1f}s\n{report}")
    key = jax.random.PRNGKey(0)
    for _ in range(2):  # warm-up
        state, m = compiled(state, key, batch)
    jax.block_until_ready(m)
    t = time.time()
    for _ in range(a.steps):
        state, m = compiled(state, key, batch)
    jax.block_until_ready(m)
    dt = (time.time() - t) / a.steps
    ex_s = a.batch / dt
    flops = accounting.train_flops_per_example(cfg, shapes, opt.trainable, text_len, loss_len)
    dev = jax.devices()[0]
    peak = accounting.peak_flops(dev.device_kind)
    mfu = flops * ex_s / (peak * jax.device_count()) if peak else float("nan")
    stats = dev.memory_stats() or {}
    print(
        f"RESULT variant={a.variant} res={a.res} batch={a.batch} freeze={a.freeze} "
        f"dtype={a.dtype} remat={a.remat} accum={a.accum} device={dev.device_kind}: "
        f"step {dt * 1e3:.1f} ms, {ex_s:.1f} examples/s, {flops / 1e12:.3f} TFLOP/example, "
        f"MFU {mfu:.1%}, peak {stats.get('peak_bytes_in_use', 0) / 2**30:.1f} GiB, "
        f"loss {float(m['training_loss']):.3f}"
    )


if __name__ == "__main__":
    main()
