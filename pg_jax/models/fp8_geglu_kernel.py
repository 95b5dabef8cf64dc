"""Pallas (Triton) GPU kernels for the GeGLU between two FP8 products, with the FP8 scaling
fused in: the frozen MLP of a ``frozen_dtype="float8"`` train step.

Around the GeGLU ``h = gelu_tanh(gate) * up`` of a float8 MLP, `pg_jax.models.quant` scales each
row (token) into an 8-bit format: forward ``h`` into e4m3 for the output product, backward the
gradients of ``gate`` and ``up`` (times the weights' per-channel scales) into e5m2 for theirs.
XLA computes each row's max |value| in one pass and converts in another, recomputing the GeGLU
from gate and up in both (and, backward, converting the two gradients in two more): on an H200
at PaliGemma 1 3B 224/32 that is 0.61 ms per layer forward and 0.98 ms backward, about a fifth
of the FP8 step (BENCHMARKS.md, "FP8 training: levers tried"). These kernels do the same work
from one program per ``block_r`` rows, reading each input once: the row block is computed
``block_c`` columns at a time and held in registers, its max taken, and the values written in
8 bits with the row's scale (rows wider than `ONE_PASS_MAX_WIDTH` are read twice, a first
pass for the max). On an H200 that took the PaliGemma 1 3B 224/32 float8 step from 234.7 to
250.3 examples/s, PaliGemma 2 3B 448/8 from 47.2 to 49.7 (BENCHMARKS.md, "The GeGLU's FP8
scaling in Pallas kernels").

The arithmetic is `quant`'s: scale ``= max |v| / top`` per row (1 where the row is all zero),
values ``clip(v / scale)``; the GeGLU and its derivative in float32 from the bf16 gate and up,
as `pg_jax.models.gemma.gelu_gated` computes them (that function rounds ``h`` to bf16 before
it is scaled; these kernels do not).

`supports` says where they run: float8's GPUs (compute capability 8.9+), widths whose power of
two part is at least 16 (Triton's blocks). The tests run them through Pallas's interpreter on
the CPU.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pg_jax import devices
from pg_jax.models import row_partition
from pg_jax.models.gelu import tanh_gelu_and_derivative

E4M3_MAX, E5M2_MAX = 448.0, 57344.0
# False keeps XLA's scaling everywhere (``scripts/bench_train_step.py --fp8_geglu_kernel off``).
ENABLED = True


class Config(NamedTuple):
    """``block_r`` rows per program, read ``block_c`` columns at a time (a power of two; the
    row's power-of-two part where that is smaller); ``one_pass``: keep the whole row block in
    registers (one read) instead of reading it twice; the Triton launch's warps and stages."""
    block_r: int = 1
    block_c: int = 2048
    num_warps: int = 4
    num_stages: int = 2
    one_pass: bool = False


# Tilings that replace `config_for`'s (``scripts/bench_train_step.py --fp8_geglu_forward``).
FORWARD: Config | None = None
BACKWARD: Config | None = None
# Widest row held in registers: 32 float32 values per thread per array at 16 warps.
ONE_PASS_MAX_WIDTH = 16384


def config_for(width: int) -> Config:
    """The tiling for rows ``width`` wide, forward and backward alike.

    From sweeps on an H200 (``scripts/bench_fp8_geglu.py --sweep``; BENCHMARKS.md): the whole
    row held and read once, in blocks of 2048 columns on 16 warps (PaliGemma 1's 16384: 0.325
    ms forward, 0.656 backward, against XLA's 0.567 and 0.924) or of 1024 on 8 warps
    (PaliGemma 2's 9216 = 9 x 1024: 0.164 and 0.274 against 0.280 and 0.484); reading it
    twice was 1.2-1.5x slower. Wider rows than `ONE_PASS_MAX_WIDTH` are read twice.
    """
    block_c = min(2048, width & -width)
    return Config(block_r=1, block_c=block_c, num_warps=16 if block_c >= 2048 else 8,
                  one_pass=width <= ONE_PASS_MAX_WIDTH)


def _block_c(width: int, config: Config) -> int:
    return min(config.block_c, width & -width)


def supports(width: int) -> bool:
    """Whether the kernels run here for a GeGLU ``width`` wide (the MLP's hidden size)."""
    if not (ENABLED and jax.default_backend() == "gpu" and (width & -width) >= 16):
        return False
    capability = devices.compute_capability(jax.devices()[0])
    return capability is not None and capability >= devices.FP8_MIN_CAPABILITY


def _scale(amax, top):
    return jnp.where(amax > 0, amax / top, 1.0)


def _to_8bit(v, inv_scale, dtype, top):
    return jnp.clip(v * inv_scale[:, None], -top, top).astype(dtype)


def _row_passes(values, n_blocks, block_c, one_pass, outputs):
    """The passes over a row block: ``values(cs)`` gives the float32 arrays at columns ``cs``;
    each is written to its ``outputs`` entry (ref, scale ref, dtype, top) with its row's
    scale. ``one_pass``: every block computed once and held (a Python loop, unrolled);
    otherwise a first loop takes the max and a second recomputes and writes."""
    def columns(i):
        if n_blocks == 1:
            return slice(None)
        if one_pass:
            return pl.ds(i * block_c, block_c)
        return pl.ds(pl.multiple_of(i * block_c, block_c), block_c)

    def row_max(vs):
        return [jnp.max(jnp.abs(v), axis=1) for v in vs]

    if one_pass or n_blocks == 1:
        held = [values(columns(i)) for i in range(n_blocks)]
        amaxes = row_max(held[0])
        for vs in held[1:]:
            amaxes = [jnp.maximum(m, a) for m, a in zip(amaxes, row_max(vs))]
    else:
        block_r = outputs[0][0].shape[0]
        init = [jnp.zeros((block_r,), jnp.float32) for _ in outputs]
        amaxes = jax.lax.fori_loop(
            0, n_blocks,
            lambda i, ms: [jnp.maximum(m, a) for m, a in zip(ms, row_max(values(columns(i))))],
            init)
    scales = [_scale(a, top) for a, (_, _, _, top) in zip(amaxes, outputs)]
    # One reciprocal per row: a multiply per value instead of a division (within a float32
    # rounding of ``v / scale``).
    inverses = [1.0 / s for s in scales]
    for (_, scale_ref, _, _), s in zip(outputs, scales):
        scale_ref[...] = s

    def write(cs, vs):
        for v, inv, (ref, _, dtype, top) in zip(vs, inverses, outputs):
            ref[:, cs] = _to_8bit(v, inv, dtype, top)

    if one_pass or n_blocks == 1:
        for i, vs in enumerate(held):
            write(columns(i), vs)
    else:
        def body(i, carry):
            cs = columns(i)
            write(cs, values(cs))
            return carry
        jax.lax.fori_loop(0, n_blocks, body, 0)


def _forward_kernel(gate_ref, up_ref, row_scale_ref, gate_scale_ref, up_scale_ref, h_ref,
                    h_scale_ref, *, block_c, one_pass):
    row_scale = row_scale_ref[...][:, None]

    def values(cs):
        gelu, _ = tanh_gelu_and_derivative(gate_ref[:, cs].astype(jnp.float32) * row_scale
                              * gate_scale_ref[cs][None, :])
        return [gelu * (up_ref[:, cs].astype(jnp.float32) * row_scale * up_scale_ref[cs][None, :])]

    _row_passes(values, gate_ref.shape[1] // block_c, block_c, one_pass,
                [(h_ref, h_scale_ref, jnp.float8_e4m3fn, E4M3_MAX)])


def _backward_kernel(gate_ref, up_ref, dh_ref, row_scale_ref, dh_scale_ref, gate_scale_ref,
                     up_scale_ref, d_gate_ref, d_gate_scale_ref, d_up_ref, d_up_scale_ref, *,
                     block_c, one_pass):
    row_scale = row_scale_ref[...][:, None]
    dh_scale = dh_scale_ref[...][:, None]

    def values(cs):
        gate_scale, up_scale = gate_scale_ref[cs][None, :], up_scale_ref[cs][None, :]
        gate = gate_ref[:, cs].astype(jnp.float32) * row_scale * gate_scale
        gelu, dgelu = tanh_gelu_and_derivative(gate)
        up = up_ref[:, cs].astype(jnp.float32) * row_scale * up_scale
        g = dh_ref[:, cs].astype(jnp.float32) * dh_scale
        return [g * up * dgelu * gate_scale, g * gelu * up_scale]

    _row_passes(values, gate_ref.shape[1] // block_c, block_c, one_pass,
                [(d_gate_ref, d_gate_scale_ref, jnp.float8_e5m2, E5M2_MAX),
                 (d_up_ref, d_up_scale_ref, jnp.float8_e5m2, E5M2_MAX)])


def _launch(kernel, row_inputs, row_scales, channel_scales, outputs, config, interpret, name):
    """``kernel`` over [R, F] row inputs, [R] row scales and [F] channel scales, one program
    per ``block_r`` rows; each output is ([R, F] values, [R] scales). On several devices each
    runs it on its own rows (`row_partition`)."""
    rows, width = row_inputs[0].shape
    as_f32 = lambda xs, n: [jnp.asarray(x, jnp.float32).reshape(n) for x in xs]  # noqa: E731
    operands = [*row_inputs, *as_f32(row_scales, rows), *as_f32(channel_scales, width)]
    n_rows = len(row_inputs) + len(row_scales)

    def call(*operands):
        rows, width = operands[0].shape
        block_r = config.block_r if rows % config.block_r == 0 else 1
        block_c = _block_c(width, config)
        row_spec = pl.BlockSpec((block_r, width), lambda i: (i, 0))
        scale_spec = pl.BlockSpec((block_r,), lambda i: (i,))
        channel_spec = pl.BlockSpec((width,), lambda i: (0,))
        out_shape, out_specs = [], []
        for dtype in outputs:
            out_shape += [jax.ShapeDtypeStruct((rows, width), dtype),
                          jax.ShapeDtypeStruct((rows,), jnp.float32)]
            out_specs += [row_spec, scale_spec]
        params = {} if interpret else {"compiler_params": plgpu.CompilerParams(
            num_warps=config.num_warps, num_stages=config.num_stages)}
        return pl.pallas_call(
            functools.partial(kernel, block_c=block_c, one_pass=config.one_pass),
            out_shape=tuple(out_shape),
            grid=(rows // block_r,),
            in_specs=([row_spec] * len(row_inputs) + [scale_spec] * len(row_scales)
                      + [channel_spec] * len(channel_scales)),
            out_specs=tuple(out_specs),
            interpret=interpret,
            name=name,
            **params,
        )(*operands)

    if jax.device_count() == 1:
        return call(*operands)
    return row_partition.over_leading_axis(
        call, operands, [True] * n_rows + [False] * len(channel_scales))


def forward(gate: jax.Array, up: jax.Array, row_scale: jax.Array, gate_scale: jax.Array,
            up_scale: jax.Array, *, config: Config | None = None,
            interpret: bool | None = None):
    """``gelu_tanh(gate) * up`` scaled per row into e4m3, from the FP8 products' outputs
    before their scales are applied (applying them here saves XLA a pass over each).

    Args:
      gate, up: [R, F] (bf16, f16 or f32), the two products' unscaled outputs: the gate is
        ``gate * row_scale[:, None] * gate_scale``, the up the same with ``up_scale``.
      row_scale: [R] float32, the activation's per-row scale.
      gate_scale, up_scale: [F] float32, the two weights' per-channel scales.
      config: the tiling (`FORWARD`, else `config_for`, by default).
      interpret: run through Pallas's interpreter (default: off the GPU; the tests).
    Returns:
      (values e4m3 [R, F], float32 scales [R]): ``h ~= values * scales[:, None]``.
    """
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    return _launch(_forward_kernel, [gate, up], [row_scale], [gate_scale, up_scale],
                   [jnp.float8_e4m3fn], config or FORWARD or config_for(gate.shape[1]), interpret,
                   "fp8_geglu_forward")


def backward(gate: jax.Array, up: jax.Array, dh: jax.Array, row_scale: jax.Array,
             dh_scale: jax.Array, gate_scale: jax.Array, up_scale: jax.Array, *,
             config: Config | None = None, interpret: bool | None = None):
    """The GeGLU's gradients, times the weights' channel scales, scaled per row into e5m2.

    Args:
      gate, up, row_scale, gate_scale, up_scale: as `forward` took them.
      dh: [R, F] the gradient of ``h`` before its per-row scale ``dh_scale`` [R] is applied
        (the output product's backward, unscaled).
      config: the tiling (`BACKWARD`, else `config_for`, by default).
      interpret: run through Pallas's interpreter (default: off the GPU; the tests).
    Returns:
      (d_gate e5m2 [R, F], scales [R], d_up e5m2 [R, F], scales [R]): with the scaled gate,
      up and dh, ``dh * up * gelu'(gate) * gate_scale ~= d_gate * scales[:, None]`` and
      ``dh * gelu(gate) * up_scale ~= d_up * scales[:, None]`` (an FP8 product's backward
      multiplies its output gradient by the weight's channel scales).
    """
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    return _launch(_backward_kernel, [gate, up, dh], [row_scale, dh_scale],
                   [gate_scale, up_scale], [jnp.float8_e5m2, jnp.float8_e5m2],
                   config or BACKWARD or config_for(gate.shape[1]), interpret,
                   "fp8_geglu_backward")
