"""Attention kernels at PaliGemma 1 3B's shapes: GPU kernel time per call, by way of computing it.

Three places use attention, with different shapes and masks:

- training (forward + backward): queries = keys = image + text tokens, prefix-LM mask;
- the decode prefill (forward): the same with a prompt that is all prefix (padding only);
- one-token decode steps: one query per row over the KV cache, multi-query (1 kv head).

And PaliGemma 2 3B's training shape (Gemma 2 2B: 8 query heads, 4 kv heads of 256, logit
soft-cap 50), where the einsums and the Pallas forward kernel (``pallas``, with the einsums'
backward pass) take the cap; ``--top_kernels`` lists its costliest kernels (``XLA_FLAGS=--xla_gpu_enable_command_buffer=`` for XLA's own names).

For each, the rows compare ``pg_jax.models.attention.attend`` implementations and ways of
expressing the mask (a dense boolean mask, per-row key lengths, causal), so that the cheapest
correct one can be chosen. Every variant's output is checked against the einsum reference.

  python scripts/bench_attention.py                 # GPU
  python scripts/bench_attention.py --small         # CPU smoke test (no kernel times on CPU)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pg_jax import profiling  # noqa: E402
from pg_jax.models import attention, paligemma  # noqa: E402


def _inputs(b, t, s, n, k, h, seed=0):
    rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(rng[0], (b, t, n, h), jnp.bfloat16) * h**-0.5
    kk = jax.random.normal(rng[1], (b, s, k, h), jnp.bfloat16)
    v = jax.random.normal(rng[2], (b, s, k, h), jnp.bfloat16)
    return q, kk, v


def _time(fn, args, iters, top_kernels=0):
    """(GPU kernel ms per call, wall ms per call) after a warm-up; with ``top_kernels``,
    prints the costliest kernels' ms per call."""
    jax.block_until_ready(fn(*args))

    def many():
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)

    t0 = time.perf_counter()
    many()
    wall = (time.perf_counter() - t0) / iters * 1e3
    kernels = profiling.kernel_times(many)
    for name, micros in kernels.micros.most_common(top_kernels):
        label = kernels.hlo_op.get(name, name)
        print(f"    {micros / iters / 1e3:.3f} ms  x{kernels.count[name] // iters}  {label[:90]}")
    return kernels.total_ms / iters, wall


def _report(title, variants, args, iters, reference="einsum", rows_valid=None, top_kernels=0):
    """Times each variant; the output check skips query rows where rows_valid[B, T] is False."""
    print(f"\n{title}")
    print("| variant | kernel ms | wall ms | max abs diff vs einsum (output; gradients) |")
    print("|---|---|---|---|")
    keep = 1.0 if rows_valid is None else np.asarray(rows_valid)[:, :, None, None]
    ref = jax.jit(variants[reference])(*args)
    for name, fn in variants.items():
        fn = jax.jit(fn)
        try:
            out = fn(*args)
            kernel_ms, wall_ms = _time(fn, args, iters, top_kernels)
        except Exception as e:  # noqa: BLE001  (a kernel may not exist on this GPU / backend)
            print(f"| {name} | failed: {str(e).splitlines()[0][:80]} | | |")
            continue
        diffs = [np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))
                 for x, y in zip(jax.tree.leaves(out[1:]), jax.tree.leaves(ref[1:]))]
        first = np.max(np.abs(np.asarray(out[0], np.float32) - np.asarray(ref[0], np.float32))
                       * keep)
        shown = f"{first:.3g}" + (f"; {', '.join(f'{d:.3g}' for d in diffs)}" if diffs else "")
        print(f"| {name} | {kernel_ms:.3f} | {wall_ms:.3f} | {shown} |")


def _with_gradients(fn):
    """fn(q, k, v) -> (its output, the gradients of sum(output^2) by q, k and v)."""
    def loss(q, kk, v):
        return jnp.sum(fn(q, kk, v).astype(jnp.float32) ** 2)

    return lambda q, kk, v: (fn(q, kk, v), jax.grad(loss, argnums=(0, 1, 2))(q, kk, v))


def prefix_lm_mask(b, prefix_len, t):
    """bool[B, T, T]: each row's first prefix_len[b] tokens are a prefix, the rest causal."""
    mask_ar = (jnp.arange(t)[None, :] >= prefix_len[:, None]).astype(jnp.int32)
    return paligemma.make_attn_mask(jnp.ones((b, t), bool), mask_ar)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--only_pg2", action="store_true", help="the PaliGemma 2 rows alone")
    p.add_argument("--top_kernels", type=int, default=0,
                   help="PaliGemma 2 rows: print each variant's N costliest GPU kernels")
    a = p.parse_args()
    n, k, h = 8, 1, 256  # Gemma 2B: 8 query heads, 1 kv head of 256
    if a.small:
        n, h = 4, 16
    attend = attention.attend
    print(jax.devices()[0].device_kind)
    pg2_training(a)
    if a.only_pg2:
        return

    # Training: 256 image + 32 text tokens, prefix = image + a 16..24-token prompt.
    b, t = (2, 24) if a.small else (32, 288)
    q, kk, v = _inputs(b, t, t, n, k, h)
    prefix = jnp.asarray(np.random.default_rng(0).integers(t - 16, t - 8, b), jnp.int32)
    mask = prefix_lm_mask(b, prefix, t)

    def train(impl):
        return _with_gradients(lambda q, kk, v: attend(q, kk, v, mask, implementation=impl))

    def two_calls(q, kk, v):
        # Prefix queries see exactly the prefix (key lengths); the others see everything up to
        # themselves (causal): two maskless fused calls instead of one with a dense mask.
        dpa = functools.partial(jax.nn.dot_product_attention, scale=1.0,
                                implementation=None if a.small else "cudnn")
        in_prefix = (jnp.arange(t)[None, :] < prefix[:, None])[:, :, None, None]
        return jnp.where(in_prefix, dpa(q, kk, v, key_value_seq_lengths=prefix),
                         dpa(q, kk, v, is_causal=True))


    impls = ["einsum", "xla"] + ([] if a.small else ["cudnn"])
    rows = {i: train(i) for i in impls}
    rows["fused, prefix by key lengths + causal (two calls)"] = _with_gradients(two_calls)
    _report(f"training forward + backward, q [{b}, {t}, {n}, {h}], kv heads {k}, prefix-LM mask",
            rows, (q, kk, v), a.iters)

    # Prefill: 1024 image + 16 prompt tokens, all prefix; rows padded to different lengths.
    b, t = (2, 24) if a.small else (16, 1040)
    q, kk, v = _inputs(b, t, t, n, k, h)
    lengths = jnp.asarray(np.linspace(t - 4, t, b).astype(np.int32))
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    dense = valid[:, None, :] & valid[:, :, None]
    prefill = {i: (lambda q, kk, v, i=i: (attend(q, kk, v, dense, implementation=i),))
               for i in impls}
    fused = "xla" if a.small else "cudnn"
    by_lengths = attention.KeyLengths(lengths)  # what an all-prefix decode prefill passes
    prefill["fused, key lengths instead of a mask"] = lambda q, kk, v: (
        attend(q, kk, v, by_lengths, implementation=fused),)
    prefill["fused, no mask (lower bound)"] = lambda q, kk, v: (
        attend(q, kk, v, None, implementation=fused),)
    _report(f"prefill forward, q [{b}, {t}, {n}, {h}], rows padded to different lengths",
            prefill, (q, kk, v), a.iters, rows_valid=valid)

    # One-token steps over a 289-slot cache (224 px: 256 + 16 + 17).
    s = 24 if a.small else 289
    for b in (1, 16):
        q, kk, v = _inputs(b, 1, s, n, k, h)
        step_mask = jnp.arange(s)[None, None, :] < jnp.full((b, 1, 1), s - 5)
        rows = {i: (lambda q, kk, v, i=i: (attend(q, kk, v, step_mask, implementation=i),))
                for i in impls}

        def folded(q, kk, v, impl):
            # One query position, so the G query heads of a kv head can be G query positions
            # of one head: one [G, S] tile per kv head instead of G padded [1, S] ones.
            g = n // k
            qf = q.reshape(q.shape[0], k, g, h).transpose(0, 2, 1, 3)  # [B, G, K, H]
            mf = jnp.broadcast_to(step_mask, (q.shape[0], g, s))
            out = attend(qf, kk, v, mf, implementation=impl)
            return (out.transpose(0, 2, 1, 3).reshape(q.shape),)

        for i in impls[1:]:
            rows[f"{i}, heads folded into queries"] = functools.partial(folded, impl=i)
        _report(f"decode step, q [{b}, 1, {n}, {h}] over {s} cached keys", rows, (q, kk, v),
                a.iters * 5)


def pg2_training(a):
    """Forward + backward at PaliGemma 2 3B's 448 px shape: batch 8, 1024 + 32 tokens."""
    n, k, h, cap = (4, 2, 16, 50.0) if a.small else (8, 4, 256, 50.0)
    b, t = (2, 40) if a.small else (8, 1056)
    q, kk, v = _inputs(b, t, t, n, k, h)
    prefix = jnp.asarray(np.random.default_rng(0).integers(t - 24, t - 8, b), jnp.int32)
    mask = prefix_lm_mask(b, prefix, t)

    rows = {impl: _with_gradients(lambda q, kk, v, impl=impl: attention.attend(
        q, kk, v, mask, softcap=cap, implementation=impl)) for impl in ("einsum", "pallas")}
    _report(f"PaliGemma 2 training forward + backward, q [{b}, {t}, {n}, {h}], kv heads {k}, "
            f"soft-cap {cap:g}, prefix-LM mask", rows, (q, kk, v), a.iters,
            top_kernels=a.top_kernels)


if __name__ == "__main__":
    main()
