"""The float8 MLP's GeGLU with its FP8 scaling: `pg_jax.models.fp8_geglu_kernel` against XLA.

A ``frozen_dtype=float8`` train step scales the GeGLU's output per row into e4m3 (forward) and
its two gradients, times the weights' channel scales, into e5m2 (backward). This times that
work alone at the train step's shapes, two ways:

- ``xla``: what the step runs without the kernels, `gemma.gelu_gated` (forward, or its backward
  pass) and `quant._to_fp8` on its outputs, as `quant.fp8_einsum` scales them;
- ``kernel``: `fp8_geglu_kernel.forward` / ``backward``, for each tiling of ``--sweep`` (or the
  tiling `config_for` picks).

It prints ms (host clock around ``--iters`` calls), the GB/s of the kernel's HBM reads and
writes counted once, and each kernel's largest difference from XLA's values (dequantized,
relative to the row's max; e4m3 and e5m2 steps are 2^-3 and 2^-2 of a value). With ``--best``
it writes the fastest tilings, as ``bench_train_step.py --fp8_geglu_forward/--backward`` take
them.

  PYTHONPATH=. python3 scripts/bench_fp8_geglu.py
  PYTHONPATH=. python3 scripts/bench_fp8_geglu.py --shapes pg1_224x32 --sweep --best best.txt
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from bench_fp8_matmul import time_calls  # scripts/ is the script's own directory

from pg_jax.models import fp8_geglu_kernel as kernel
from pg_jax.models import gemma, quant

# name -> (rows, width): batch x tokens of the step, the MLP's hidden size
SHAPES = {
    "pg1_224x32": (32 * 288, 16384),
    "pg1_448x8": (8 * 1056, 16384),
    "pg2_448x8": (8 * 1056, 9216),
}


def _xla_forward(gate, up, row_scale, gate_s, up_s):
    """The unfused path: the products' scales applied, the GeGLU, its scaling into e4m3."""
    gate, up = (a.astype(jnp.float32) * row_scale[:, None] * s for a, s in
                ((gate, gate_s), (up, up_s)))
    h = gemma.gelu_gated(gate.astype(jnp.bfloat16), up.astype(jnp.bfloat16))
    return quant._to_fp8(h, "RF", "F", jnp.float8_e4m3fn, kernel.E4M3_MAX)


def _xla_backward(gate, up, dh, row_scale, dh_scale, gate_s, up_s):
    gate, up = ((a.astype(jnp.float32) * row_scale[:, None] * s).astype(jnp.bfloat16)
                for a, s in ((gate, gate_s), (up, up_s)))
    dh = (dh.astype(jnp.float32) * dh_scale[:, None]).astype(jnp.bfloat16)
    _, vjp = jax.vjp(gemma.gelu_gated, gate, up)
    d_gate, d_up = vjp(dh)
    out = []
    for d, s in ((d_gate, gate_s), (d_up, up_s)):
        out += quant._to_fp8(d.astype(jnp.float32) * s, "RF", "F", jnp.float8_e5m2,
                             kernel.E5M2_MAX)
    return out


def _dequantized(values, scales):
    return values.astype(jnp.float32) * scales.reshape(-1, 1)


def _max_difference(got, want):
    """Largest |got - want| over the row's max |want|, pairs of (values, scales)."""
    worst = 0.0
    for (v, s), (wv, ws) in zip(zip(got[::2], got[1::2]), zip(want[::2], want[1::2])):
        a, b = _dequantized(v, s), _dequantized(wv, ws)
        top = jnp.max(jnp.abs(b), axis=1, keepdims=True)
        worst = max(worst, float(jnp.max(jnp.abs(a - b) / jnp.where(top > 0, top, 1))))
    return worst


def _configs(sweep: bool, default: kernel.Config, width: int):
    if not sweep:
        return [default]
    pow2 = width & -width
    out = set()
    for r, c, w in itertools.product((1, 2), (1024, 2048, 4096), (4, 8, 16)):
        if c <= pow2:
            out.add(kernel.Config(block_r=r, block_c=c, num_warps=w))
    for r, c, w in itertools.product((1, 2), (1024, 2048), (8, 16, 32)):
        if c <= pow2:  # the whole row held: one read
            out.add(kernel.Config(block_r=r, block_c=c, num_warps=w, one_pass=True))
    return sorted(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--sweep", action="store_true", help="time a grid of tilings")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--best", help="write the fastest forward and backward tilings here")
    a = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    best = {}
    for name in a.shapes:
        rows, width = SHAPES[name]
        keys = jax.random.split(jax.random.key(0), 7)
        gate, up, dh = (jax.random.normal(k, (rows, width), jnp.bfloat16) for k in keys[:3])
        row_scale, dh_scale = (jax.random.uniform(k, (rows,), minval=0.5, maxval=2)
                               for k in keys[3:5])
        dh_scale = 1e-3 * dh_scale
        gate_s, up_s = (jax.random.uniform(k, (width,), minval=0.5, maxval=2) for k in keys[5:])
        sides = [
            ("forward", _xla_forward, kernel.forward, (gate, up, row_scale, gate_s, up_s),
             kernel.FORWARD or kernel.config_for(width), 2 * rows * width * 2 + rows * width),
            ("backward", _xla_backward, kernel.backward,
             (gate, up, dh, row_scale, dh_scale, gate_s, up_s),
             kernel.BACKWARD or kernel.config_for(width),
             3 * rows * width * 2 + 2 * rows * width),
        ]
        for direction, xla_fn, kernel_fn, args, default, nbytes in sides:
            xla = jax.jit(xla_fn)
            want = xla(*args)
            t = time_calls(xla, *args, iters=a.iters)
            print(f"{name} {direction} xla: {t * 1e3:.3f} ms")
            timed = []
            for config in _configs(a.sweep, default, width):
                fn = jax.jit(lambda *xs, c=config: kernel_fn(*xs, config=c))
                try:
                    diff = _max_difference(fn(*args), want)
                    t = time_calls(fn, *args, iters=a.iters)
                except Exception as e:  # a tiling Triton does not compile: say so, go on
                    print(f"{name} {direction} kernel {tuple(config)}: failed, "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
                    continue
                timed.append((t, config))
                print(f"{name} {direction} kernel {tuple(config)}: {t * 1e3:.3f} ms, "
                      f"{nbytes / t / 1e9:.0f} GB/s, max difference {diff:.3g}")
            if timed:
                t, config = min(timed)
                best.setdefault(direction, config)
                print(f"{name} {direction} best: {tuple(config)} {t * 1e3:.3f} ms")
    if a.best:
        with open(a.best, "w") as f:
            f.write(" ".join(f"--fp8_geglu_{d} {' '.join(str(int(v)) for v in c)}"
                             for d, c in best.items()))


if __name__ == "__main__":
    main()
