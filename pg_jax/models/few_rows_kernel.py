"""A Pallas (Triton) GPU kernel for one activation row by an 8-bit weight: a decode step at
batch 1.

A batch-1 decode step multiplies one row by every weight of the LLM, so it is bound by the
bytes of weight it reads. XLA's product of a bf16 row by 8-bit values converted inside it read
them at 11-56% of an H200's bandwidth (77% for the embedding table), lowest for the
attention's small weights. This kernel reads each weight tile once, converts it to float32 in
registers and multiplies and sums it with the row on the vector units (2 FLOP per byte read);
`matmul` applies the per-output-channel scale to its output. With float8 weights it took
PaliGemma 1 3B's batch-1 decode from 1.62 to 1.26-1.31 ms per token on an H200; int8 stayed
at 1.60-1.61 (BENCHMARKS.md, "Batch-1 decoding through a Pallas kernel").

Each program owns ``block_n`` output columns of one weight (of ``G`` batched ones: the MLP's
gate and up) and ``1 / splits`` of one chunk of the contracted axis K (`chunks`), read
``block_k`` at a time. The partial sums are added outside: a 2048-column weight has only 16
column tiles, too few programs to keep 132 SMs reading. Several rows (a batch-16 step) keep
XLA's product: the same tiling through the matrix units (``tl.dot``, rows padded to 16) ran
slower than it.

`supports` says whether the kernel applies: float8 weights that `config_for` tiles, on a GPU
with FP8 (8.9+). Elsewhere `pg_jax.models.quant` keeps XLA's product; the tests run the same
kernel through Pallas's interpreter (``interpret=True``) on the CPU.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Pallas and its Triton backend ship with jax, CPU-only installs too (0.7.2, 0.10.2, 0.11.2).
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pg_jax import devices

# About four programs per SM of an H200's 132.
TARGET_PROGRAMS = 512
# False keeps XLA's product everywhere (``scripts/bench_decode.py --one_row_kernel off``).
ENABLED = True


class Config(NamedTuple):
    """A tiling: ``block_n`` output columns and ``1 / splits`` of K per program, read
    ``block_k`` at a time; the Triton launch's warps and pipeline stages."""
    block_n: int = 128
    block_k: int = 256
    splits: int = 1
    num_warps: int = 4
    num_stages: int = 4


def chunks(k: int) -> int:
    """K's odd factor: K is read as ``chunks(k)`` chunks of a power of two (Triton's blocks
    are powers of two; Gemma 2's 2304 is 9 chunks of 256)."""
    return k // (k & -k)


def config_for(g: int, k: int, n: int, w_layout: str = "kn", *, block_n: int | None = None,
               block_k: int | None = None, programs: int | None = None) -> Config | None:
    """The tiling `matmul` uses for G weights of K x N, or None where they do not tile (a
    power-of-two part of K or N under 16, Triton's smallest block).

    From a sweep at PaliGemma 1 3B's shapes on an H200 (``scripts/bench_few_rows.py
    --sweep``; BENCHMARKS.md): 256 of K per read; 128 columns per program, 64 for the
    embedding table's [N, K] rows; each chunk of K split in two until the grid has
    `TARGET_PROGRAMS` (or ``programs``) programs, each at least one read deep. ``block_n``
    and ``block_k`` override the choice (the benchmark's sweep).
    """
    depth = k // chunks(k)
    block_k = block_k or min(depth, 256)
    block_n = block_n or min(n & -n, 64 if w_layout == "nk" else 128)  # n & -n: n's power of 2
    if min(block_k, block_n) < 16 or depth % block_k or n % block_n:
        return None
    splits = 1
    while (g * chunks(k) * (n // block_n) * splits < (programs or TARGET_PROGRAMS)
           and depth % (2 * splits * block_k) == 0):
        splits *= 2
    return Config(block_n, block_k, splits)


def supports(dtype, g: int, k: int, n: int, w_layout: str = "kn") -> bool:
    """Whether `quant` runs one row by G 8-bit weights of K x N through `matmul` here.

    float8 weights only, on the GPUs that run float8 (compute capability 8.9+, where it was
    measured): `matmul` computes int8 as well, but on an H200 it decoded no faster than XLA's
    product (1.60-1.61 ms per token), and Kaggle's T4 and P100 were never run.
    """
    if not (ENABLED and jax.default_backend() == "gpu"
            and jnp.dtype(dtype) == jnp.dtype(jnp.float8_e4m3fn)):
        return False
    capability = devices.compute_capability(jax.devices()[0])
    return (capability is not None and capability >= devices.FP8_MIN_CAPABILITY
            and config_for(g, k, n, w_layout) is not None)


def _kernel(x_ref, w_ref, o_ref, *, block_k: int, steps: int, w_layout: str):
    """One program: ``o[BN] = x[depth] @ w[depth, BN]`` in float32, ``steps`` reads of
    ``block_k`` (depth: one split of one chunk of K)."""

    def step(i, acc):
        ks = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        x = x_ref[ks].astype(jnp.float32)
        if w_layout == "kn":
            return acc + jnp.sum(x[:, None] * w_ref[ks, :].astype(jnp.float32), axis=0)
        return acc + jnp.sum(w_ref[:, ks].astype(jnp.float32) * x[None, :], axis=1)

    o_ref[...] = jax.lax.fori_loop(0, steps, step, jnp.zeros(o_ref.shape, jnp.float32))


def matmul(x: jax.Array, q: jax.Array, scale: jax.Array, *, w_layout: str = "kn",
           config: Config | None = None, interpret: bool = False) -> jax.Array:
    """``(x @ q) * scale`` in float32 for each of G weights.

    Args:
      x: [G, K] activation rows (bf16, f16 or f32), one per weight.
      q: [G, K, N] (``w_layout="kn"``) or [G, N, K] (``"nk"``, the embedding table) 8-bit
        values, int8 or float8 e4m3.
      scale: [G, N] float32 per-output-channel scales.
      config: the tiling; `config_for` by default.
      interpret: run through Pallas's interpreter (any backend: the tests).
    Returns:
      [G, N] float32.
    """
    g, k = x.shape
    n = q.shape[2] if w_layout == "kn" else q.shape[1]
    config = config or config_for(g, k, n, w_layout)
    if config is None:
        raise ValueError(f"no tiling for weights of {k} x {n}")
    c, splits = chunks(k), config.splits
    depth = k // c // splits
    # K as [chunks, power of two]: free reshapes of the row and the weight.
    x = x.reshape(g, c, k // c)
    sq = pl.squeezed
    if w_layout == "kn":
        q = q.reshape(g, c, k // c, n)
        w_spec = pl.BlockSpec((sq, sq, depth, config.block_n),
                              lambda gi, ci, s, j: (gi, ci, s, j))
    else:
        q = q.reshape(g, n, c, k // c)
        w_spec = pl.BlockSpec((sq, config.block_n, sq, depth),
                              lambda gi, ci, s, j: (gi, j, ci, s))
    kernel = functools.partial(_kernel, block_k=config.block_k,
                               steps=depth // config.block_k, w_layout=w_layout)
    params = {} if interpret else {"compiler_params": plgpu.CompilerParams(
        num_warps=config.num_warps, num_stages=config.num_stages)}
    partial = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((g, c * splits, n), jnp.float32),
        grid=(g, c, splits, n // config.block_n),
        in_specs=[pl.BlockSpec((sq, sq, depth), lambda gi, ci, s, j: (gi, ci, s)), w_spec],
        out_specs=pl.BlockSpec((sq, sq, config.block_n),
                               lambda gi, ci, s, j: (gi, ci * splits + s, j)),
        interpret=interpret,
        name="one_row_8bit_matmul",
        **params,
    )(x, q)
    return partial.sum(axis=1) * scale.astype(jnp.float32)
