"""Times the jitted train step on random data (no TensorFlow, no checkpoint needed).

    python scripts/bench_train_step.py --variant pg1_3b --res 224 --batch 8 --freeze attn

Reports examples/s, MFU (counted as in pg_jax.accounting), the compiled
step's predicted memory and the device's measured peak; ``--profile`` adds where the step's GPU
time goes (per kind of kernel and the top kernels, see pg_jax.profiling). The setup matches the
peer baseline of BENCHMARKS.md: 32 text tokens, loss on the last 8, trainable LLM
attention, Adam. All devices form one data axis.

Levers (``scripts/bench_train_levers.py`` runs them side by side): ``--attention_impl``,
``--remat``, ``--llm_unroll`` (default: all layers without remat, a rolled scan with it),
``--frozen_dtype``, ``--logits_len`` (positions given logits; the default 8 is the answer only,
32 is every text position with the same loss), ``--no_donate``, ``--strategy replicate`` (a full
copy of the weights per device) instead of FSDP, and ``--set llm.field=value`` for any model
field.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

jax.config.update("jax_threefry_partitionable", True)

import ml_collections
import numpy as np

from pg_jax import accounting, optim, profiling, sharding
from pg_jax import state as state_lib
from pg_jax import step as step_lib
from pg_jax.models import fp8_geglu_kernel, loader, lora, paligemma, variants


def lora_config(a: argparse.Namespace) -> dict | None:
    """``paligemma.Model(lora=...)`` for ``--freeze lora`` (as the trainer's ``config.lora``)."""
    if a.freeze != "lora":
        return None
    targets = a.lora_targets or ["attn_mlp"]
    if len(targets) == 1 and targets[0] in lora.TARGETS:  # a preset name
        targets = list(lora.TARGETS[targets[0]])
    return {"rank": a.lora_rank, "alpha": a.lora_alpha, "targets": targets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--freeze", default="attn", choices=sorted(optim.PRESETS))
    p.add_argument("--lora_rank", type=int, default=8, help="--freeze lora: factor rank")
    p.add_argument("--lora_alpha", type=float, default=8.0, help="--freeze lora: scale alpha/rank")
    p.add_argument("--lora_targets", nargs="+", metavar="REGEX",
                   help="--freeze lora: a preset of pg_jax.models.lora.TARGETS (default "
                        "attn_mlp: q/k/v/o/gate/up/down) or regexes over weight names")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--frozen_dtype", default="bfloat16")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention_impl", default="einsum")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--llm_unroll", type=int, default=0,
                   help="LLM layers per scan iteration; default (0): as the trainer does, all "
                        "of them without remat, 1 (a rolled scan) with remat")
    p.add_argument("--set", nargs="*", default=[], metavar="TOWER.FIELD=VALUE",
                   help="model field overrides, e.g. llm.scan_unroll=18 (value parsed as Python)")
    p.add_argument("--strategy", default="fsdp", choices=["fsdp", "replicate"])
    p.add_argument("--profile", action="store_true", help="print GPU kernel time per kind")
    p.add_argument("--logits_len", type=int, default=8,
                   help="text positions given logits (>= the 8 scored ones; 32 = all)")
    p.add_argument("--no_donate", action="store_true", help="do not donate the train state")
    p.add_argument("--fp8_geglu_kernel", default="on", choices=["on", "off"],
                   help="float8: the GeGLU's FP8 scaling in pg_jax.models.fp8_geglu_kernel "
                        "(off: XLA's passes)")
    for direction in ("forward", "backward"):
        p.add_argument(f"--fp8_geglu_{direction}", type=int, nargs=5,
                       metavar=("ROWS", "COLUMNS", "WARPS", "STAGES", "ONE_PASS"),
                       help=f"the {direction} kernel's tiling (scripts/bench_fp8_geglu.py --best)")
    a = p.parse_args()
    fp8_geglu_kernel.ENABLED = a.fp8_geglu_kernel == "on"
    if a.fp8_geglu_forward:
        fp8_geglu_kernel.FORWARD = fp8_geglu_kernel.Config(*a.fp8_geglu_forward[:4], bool(a.fp8_geglu_forward[4]))
    if a.fp8_geglu_backward:
        fp8_geglu_kernel.BACKWARD = fp8_geglu_kernel.Config(*a.fp8_geglu_backward[:4], bool(a.fp8_geglu_backward[4]))

    text_len, loss_len = 32, 8
    lora_cfg = lora_config(a)
    cfg = variants.get_config(  # tiny variants take the project tokenizer's vocabulary
        a.variant,
        res=a.res,
        dtype=a.dtype,
        remat_policy=a.remat,
        attention_impl=a.attention_impl,
    ).to_dict()
    cfg["llm"]["scan_unroll"] = a.llm_unroll or (cfg["llm"]["depth"] if a.remat == "none" else 1)
    for item in a.set:
        key, value = item.split("=", 1)
        tower, field = key.split(".", 1)
        cfg[tower][field] = ast.literal_eval(value)
    if lora_cfg is not None:  # the factors are a model field, as the trainer's config.lora
        cfg["lora"] = lora_cfg
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
    strategy = [(".*", 'fsdp(axis="data")' if a.strategy == "fsdp" else "replicate()")]
    # The trainer's own state plan (pg_jax.state), filled leaf by leaf with random weights
    # straight in their dtypes and shardings, as a checkpoint is loaded: the measured peak
    # afterwards is the step's, not an init program's.
    plan = state_lib.plan(model, opt, mesh, strategy, frozen_dtype=a.frozen_dtype,
                          loss_scale=False)
    shapes = plan.param_shapes
    state = state_lib.materialize_random(plan, seed=0)
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
        step_lib.make_update_fn(model, opt, loss_len=a.logits_len, grad_accum_steps=a.accum),
        donate_argnums=() if a.no_donate else (0,),
    )
    t = time.time()
    compiled = fn.lower(state, jax.random.PRNGKey(0), batch).compile(step_lib.compiler_options())
    report, predicted, _ = accounting.memory_report(compiled, jax.devices()[0])
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
    # Model FLOPs count the scored positions only: extra logits are overhead, not useful work.
    flops = accounting.train_flops_per_example(cfg, shapes, opt.trainable, text_len, loss_len)
    dev = jax.devices()[0]
    peak = accounting.peak_flops(dev.device_kind)
    mfu = flops * ex_s / (peak * jax.device_count()) if peak else float("nan")
    stats = dev.memory_stats() or {}
    print(
        f"RESULT variant={a.variant} res={a.res} batch={a.batch} freeze={a.freeze} "
        f"dtype={a.dtype} frozen={a.frozen_dtype} remat={a.remat} accum={a.accum} "
        f"logits_len={a.logits_len} donate={not a.no_donate} "
        f"llm_unroll={cfg['llm']['scan_unroll']} set={','.join(a.set) or '-'} "
        f"strategy={a.strategy} devices={jax.device_count()}x{dev.device_kind}: "
        f"step {dt * 1e3:.1f} ms, {ex_s:.1f} examples/s, {flops / 1e12:.3f} TFLOP/example, "
        f"trainable={sum(int(np.prod(shapes[k].shape)) for k in opt.trainable)} "
        f"MFU {mfu:.1%}, peak {stats.get('peak_bytes_in_use', 0) / 2**30:.1f} GiB "
        f"(predicted {(predicted or 0) / 2**30:.1f}), "
        f"loss {float(m['training_loss']):.3f}"
    )
    if a.profile:
        def two_steps():
            nonlocal state
            for _ in range(2):
                state, out = compiled(state, key, batch)
            jax.block_until_ready(out)

        print(profiling.summarize(profiling.kernel_times(two_steps), per=2, top=25))


if __name__ == "__main__":
    main()
