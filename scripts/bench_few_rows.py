"""A decode step's 8-bit products: the Pallas kernel (`pg_jax.models.few_rows_kernel`) against
XLA's, at PaliGemma 1 3B's LLM shapes.

Each measurement multiplies a few activation rows by all 18 layers' weights of one kind (18
distinct arrays, as the decode layout holds them; the embedding once), inside one jitted call,
so a time is the weights' bytes over the bandwidth the product reaches, not a launch. Sides:

- ``kernel`` (one row only): `few_rows_kernel.matmul`, for each tiling of ``--sweep`` (or the
  one `few_rows_kernel.config_for` picks);
- ``xla_8bit``: XLA's product of the 8-bit values with the output scaled (`quant._scaled_after`,
  what `quant.einsum` runs for few rows without the kernel), one row padded to two as
  `pg_jax.models.gemma._matmul` does;
- ``xla_bf16``: a bf16 weight.

It prints ms, GB/s of weight read and the fraction of ``--hbm_gbps``, and checks each kernel
tiling's output against XLA's.

  PYTHONPATH=. python3 scripts/bench_few_rows.py --rows 1 16
  PYTHONPATH=. python3 scripts/bench_few_rows.py --rows 1 --sweep
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from bench_fp8_matmul import time_calls  # scripts/ is the script's own directory

from pg_jax.models import few_rows_kernel, quant

LAYERS = 18
# name -> (G, K, N, weight layout, layers): PaliGemma 1 3B's decode-layout weights
SHAPES = {
    "qkv_fused": (1, 2048, 2560, "kn", LAYERS),
    "attn_out": (1, 2048, 2048, "kn", LAYERS),
    "gate_up": (2, 2048, 16384, "kn", LAYERS),
    "mlp_out": (1, 16384, 2048, "kn", LAYERS),
    "embedding": (1, 2048, 257152, "nk", 1),
}


def _weights(g, k, n, layout, layers, fmt):
    shape = (g, k, n) if layout == "kn" else (g, n, k)
    out = []
    for i in range(layers):
        w = jax.random.normal(jax.random.key(i), shape, jnp.float32) * k**-0.5
        key = quant.EMBEDDING if layout == "nk" else "llm/layers/mlp/linear"
        wq = quant.quantize(key, w, fmt)  # scale over K: [G, 1, N] or [G, N, 1]
        out.append((wq.q, wq.scale.reshape(g, n), w.astype(jnp.bfloat16)))
    return out


def _sides(layout, configs):
    """name -> jitted fn(x, weights) summing the products over the layers' weights (arguments,
    not constants: XLA would fold gigabytes of constants into the executable)."""
    eqn = "GMK,GKN->GMN" if layout == "kn" else "GMK,GNK->GMN"

    def over_layers(product):
        return jax.jit(lambda x, weights: sum(product(x, *w) for w in weights))

    def xla_8bit(x, q, s, wb):
        del wb
        m = x.shape[1]
        if m == 1:  # gemma._matmul's two rows
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
        y = jnp.einsum(eqn, x, q.astype(x.dtype), preferred_element_type=jnp.float32)
        return y[:, :m] * s[:, None, :]

    def xla_bf16(x, q, s, wb):
        del q, s
        m = x.shape[1]
        if m == 1:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
        return jnp.einsum(eqn, x, wb, preferred_element_type=jnp.float32)[:, :m]

    sides = {"xla_bf16": over_layers(xla_bf16), "xla_8bit": over_layers(xla_8bit)}
    for c in configs:  # one row: [G, 1, K] -> [G, K]
        sides[f"kernel {tuple(c)}"] = over_layers(
            lambda x, q, s, wb, c=c: few_rows_kernel.matmul(
                x[:, 0], q, s, w_layout=layout, config=c)[:, None])
    return sides


def _configs(g, k, n, layout, sweep: bool):
    """The default tiling, or with ``sweep`` a grid of tilings around it."""
    if not sweep:
        return [few_rows_kernel.config_for(g, k, n, layout)]
    out = []
    for bn, bk, warps, stages, programs in itertools.product(
            (32, 64, 128, 256), (64, 128, 256), (4, 8), (4,), (264, 1056)):
        c = few_rows_kernel.config_for(g, k, n, layout, block_n=bn, block_k=bk,
                                       programs=programs)
        if c is not None and (c := c._replace(num_warps=warps, num_stages=stages)) not in out:
            out.append(c)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--format", default="float8", choices=["int8", "float8"])
    p.add_argument("--sweep", action="store_true", help="time every tiling of a small grid")
    p.add_argument("--top", type=int, default=5, help="with --sweep: tilings printed per shape")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--hbm_gbps", type=float, default=4800.0, help="H200: 4800")
    args = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.format}")
    for name in args.shapes:
        g, k, n, layout, layers = SHAPES[name]
        weights = _weights(g, k, n, layout, layers, args.format)
        configs = _configs(g, k, n, layout, args.sweep)
        sides = _sides(layout, configs)
        gbytes = g * k * n * layers / 1e9
        for m in args.rows:
            x = jax.random.normal(jax.random.key(99), (g, m, k), jnp.bfloat16)
            ref = np.asarray(sides["xla_8bit"](x, weights))
            times = {}
            for side, fn in sides.items():
                if m > 1 and side.startswith("kernel"):
                    continue  # the kernel takes one row
                try:
                    y = fn(x, weights)
                    err = float(np.max(np.abs(np.asarray(y) - ref)) / np.max(np.abs(ref)))
                    times[side] = (time_calls(fn, x, weights, iters=args.iters), err)
                    if args.sweep:  # as it goes: a long sweep may be cut short
                        print(f"    {side} {times[side][0] * 1e3:.3f} ms", flush=True)
                except Exception as e:  # noqa: BLE001 - a tiling Triton refuses: say so, go on
                    print(f"  {name} rows={m} {side}: {type(e).__name__}: {str(e)[:200]}")
            ranked = sorted(times.items(), key=lambda kv: kv[1][0])
            kernels = [kv for kv in ranked if kv[0].startswith("kernel")][: args.top]
            shown = [kv for kv in ranked if not kv[0].startswith("kernel")] + kernels
            print(f"{name} [{g}x{k}x{n}] x{layers}, rows {m}: {gbytes:.3f} GB of 8-bit weight")
            for side, (t, err) in shown:
                bw = gbytes * (2 if side == "xla_bf16" else 1) / t  # bf16 reads twice the bytes
                print(f"  {side:42} {t * 1e3:8.3f} ms {bw:7.0f} GB/s "
                      f"{bw / args.hbm_gbps:6.1%} of HBM, rel.err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
