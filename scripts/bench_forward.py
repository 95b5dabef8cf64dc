"""Real-size check: PaliGemma 3B forward on one accelerator (random bf16 weights).

Instantiates a named variant with random weights directly on the device (no
host copy), runs the scanned forward (text logits for a DocVQA-shaped batch),
and reports compile time, step time and peak device memory. Needs no
tensorflow and no checkpoint.

  python scripts/bench_forward.py --variant pg1_3b pg2_3b --res 224 448 --batch 8
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import paligemma, variants


def param_count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def bench(variant: str, res: int, batch: int, text_len: int, attention_impl: str, steps: int):
    cfg = variants.get_config(variant, res=res, dtype="bfloat16", attention_impl=attention_impl)
    if cfg.llm.get("attn_logits_softcap") and attention_impl != "einsum":
        cfg.llm.attention_impl = "einsum"  # the fused kernels have no soft-cap
    model = paligemma.Model(**cfg.to_dict())
    image = jnp.zeros((batch, res, res, 3), jnp.bfloat16)
    text = jnp.ones((batch, text_len), jnp.int32)
    mask_ar = jnp.concatenate([jnp.zeros((batch, text_len // 2), jnp.int32),
                               jnp.ones((batch, text_len - text_len // 2), jnp.int32)], axis=1)

    # Random bf16 weights created on the device by a jitted init.
    init = jax.jit(lambda rng: jax.tree.map(lambda x: x.astype(jnp.bfloat16),
                                            model.init(rng, image[:1], text[:1], mask_ar[:1])))
    params = init(jax.random.PRNGKey(0))["params"]
    jax.block_until_ready(params)

    # Logits only at the answer half, as the trainer computes them.
    logits_at = jnp.broadcast_to(jnp.arange(text_len // 2, text_len), (batch, text_len // 2))
    fwd = jax.jit(lambda p, i, t, m: model.apply({"params": p}, i, t, m, logits_at=logits_at)[0])
    t0 = time.perf_counter()
    compiled = fwd.lower(params, image, text, mask_ar).compile()
    compile_s = time.perf_counter() - t0
    out = compiled(params, image, text, mask_ar)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = compiled(params, image, text, mask_ar)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / steps
    stats = jax.devices()[0].memory_stats() or {}
    result = dict(
        variant=variant, res=res, batch=batch, text_len=text_len, attention_impl=attention_impl,
        params=param_count(params), compile_s=round(compile_s, 2), step_ms=round(step_s * 1e3, 2),
        examples_per_s=round(batch / step_s, 1),
        peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        finite=bool(jnp.isfinite(out).all()),
    )
    del params, compiled, out
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=["pg1_3b", "pg2_3b"])
    parser.add_argument("--res", nargs="+", type=int, default=[224, 448])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text_len", type=int, default=32)
    parser.add_argument("--attention_impl", default="einsum", choices=["einsum", "xla", "cudnn"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    results = []
    for variant in args.variant:
        for res in args.res:
            r = bench(variant, res, args.batch, args.text_len, args.attention_impl, args.steps)
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| variant | res | batch | params | compile s | step ms | examples/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['res']} | {r['batch']} | {r['params']:,} | {r['compile_s']} "
              f"| {r['step_ms']} | {r['examples_per_s']} | {r['peak_gib']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
