"""Frozen-weight products in bf16 against FP8 (`pg_jax.models.quant.fp8_einsum`), alone.

The train step's frozen matrices (the LLM's MLP in attention-only training, the image encoder)
are products of an activation by a weight that gets no gradient: forward ``x @ w``, and backward
only ``dx = dy @ w.T``. This times both, at PaliGemma 1 3B's shapes, three ways:

- ``bf16``: the weight in bf16, as ``frozen_dtype=bfloat16``;
- ``fp8``: `quant.einsum` on a float8 weight, activation and gradient scaling included, as
  ``frozen_dtype=float8`` runs it;
- ``fp8_gemm``: only the FP8 product of operands already in e4m3, the ceiling the scaling
  overhead is measured against.

With ``--rows``, it times instead the forward of the MLP's 2048 x 32768 gate|up product on a
float8 weight by the number of activation rows, down to a decode step's few: `fp8_einsum`, the
8-bit values multiplied as they are and the output scaled (`quant._scaled_after`), and bf16;
`quant.einsum` picks among its paths by these rows (`quant.FEW_ROWS`, `quant.FP8_MIN_ROWS`).

It prints the time of each (host clock around 30 calls: a lead, not a kernel time; the train
step's ``--profile`` has the kernel times), its TFLOP/s, and whether XLA compiled the product to
a cuBLAS call on FP8 operands. In a profile, cuBLAS's FP8 kernels are the ``nvjet_sm90_qq...``
(both operands e4m3) and ``..._qr...`` (e5m2 gradient) ones: names seen only in FP8 steps.

  PYTHONPATH=. python3 scripts/bench_fp8_matmul.py
  PYTHONPATH=. python3 scripts/bench_fp8_matmul.py --rows 2 16 64 128 256 512 1024 4352
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from pg_jax.models import quant

# name -> (rows, inputs, outputs): rows = batch x tokens of the step
SHAPES = {
    "llm_gate_224x32": (32 * 288, 2048, 16384),
    "llm_down_224x32": (32 * 288, 16384, 2048),
    "llm_gate_448x8": (8 * 1056, 2048, 16384),
    "vit_mlp_224x32": (32 * 256, 1152, 4304),
}


def time_calls(fn, *args, iters: int) -> float:
    """Seconds per call of ``fn(*args)``: two untimed calls (compile), then ``iters`` timed."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def _uses_fp8_gemm(fn, *args) -> bool:
    """Whether the optimized HLO has a cuBLAS call on e4m3 operands (an FP8 GEMM)."""
    lines = fn.lower(*args).compile().as_text().splitlines()
    return any("cublas" in line and "f8e4m3" in line for line in lines if "custom-call" in line)


EQN = "MK,KN->MN"


def _forward(w):
    return jax.jit(lambda x: quant.einsum(EQN, x, w))


def _forward_and_dx(w):
    """Forward and dx, as the train step runs a frozen product."""
    def run(x, g):
        y, vjp = jax.vjp(lambda x: quant.einsum(EQN, x, w), x)
        return y, vjp(g)[0]
    return jax.jit(run)


def measure(name: str, iters: int) -> list[tuple]:
    """Rows (shape, side, fwd ms, TFLOP/s, fwd+dx ms, TFLOP/s, FP8 GEMM?) for one shape."""
    m, k, n = SHAPES[name]
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (m, k), jnp.bfloat16)
    w = jax.random.normal(kw, (k, n), jnp.float32) * k**-0.5
    g = jax.random.normal(kg, (m, n), jnp.bfloat16)
    wq = quant.quantize("llm/layers/mlp/linear", w[None], "float8")
    wq = quant.QArray(wq.q[0], wq.scale[0])
    flop, rows = 2 * m * k * n, []
    for side, weight in (("bf16", w.astype(jnp.bfloat16)), ("fp8", wq)):
        f, fb = _forward(weight), _forward_and_dx(weight)
        tf, tb = time_calls(f, x, iters=iters), time_calls(fb, x, g, iters=iters)
        rows.append((name, side, tf * 1e3, flop / tf / 1e12, tb * 1e3, 2 * flop / tb / 1e12,
                     side == "fp8" and _uses_fp8_gemm(f, x)))
    xq = x.astype(jnp.float8_e4m3fn)
    gemm = jax.jit(lambda a, b: jnp.einsum(EQN, a, b, preferred_element_type=jnp.bfloat16))
    tg = time_calls(gemm, xq, wq.q, iters=iters)
    rows.append((name, "fp8_gemm", tg * 1e3, flop / tg / 1e12, float("nan"), float("nan"),
                 _uses_fp8_gemm(gemm, xq, wq.q)))
    exact = jnp.einsum(EQN, x.astype(jnp.float32), w)
    err = jnp.linalg.norm(_forward(wq)(x).astype(jnp.float32) - exact) / jnp.linalg.norm(exact)
    print(f"{name}: fp8 relative error {float(err):.4f}")
    return rows


def measure_rows(rows: list[int], iters: int) -> None:
    """Forward times of the gate|up product (2048 x 32768) by activation rows, three ways."""
    k, n = 2048, 32768
    w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * k**-0.5
    wq = quant.quantize("llm/layers/mlp/linear", w[None], "float8")
    wq = quant.QArray(wq.q[0], wq.scale[0])
    wb = w.astype(jnp.bfloat16)
    fp8 = jax.jit(lambda x, q, s: quant.fp8_einsum(EQN, x, q, s))
    scaled_after = jax.jit(lambda x, w: quant._scaled_after(EQN, x, w, x.dtype))
    bf16 = jax.jit(lambda x, w: x @ w)
    print(f"{'rows':>6} {'fp8 ms':>8} {'8-bit values ms':>16} {'bf16 ms':>8}")
    for m in rows:
        x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
        times = (time_calls(fp8, x, wq.q, wq.scale, iters=iters),
                 time_calls(scaled_after, x, wq, iters=iters), time_calls(bf16, x, wb, iters=iters))
        print(f"{m:6} {times[0] * 1e3:8.3f} {times[1] * 1e3:16.3f} {times[2] * 1e3:8.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--rows", type=int, nargs="+",
                   help="time the gate|up forward at these activation row counts instead")
    args = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    if args.rows:
        measure_rows(args.rows, args.iters)
        return
    rows = [r for name in args.shapes for r in measure(name, args.iters)]
    print(f"{'shape':18} {'side':9} {'fwd ms':>8} {'TFLOP/s':>8} {'fwd+dx ms':>10} {'TFLOP/s':>8} "
          "FP8 GEMM")
    for r in rows:
        print(f"{r[0]:18} {r[1]:9} {r[2]:8.3f} {r[3]:8.0f} {r[4]:10.3f} {r[5]:8.0f} {r[6]}")


if __name__ == "__main__":
    main()
