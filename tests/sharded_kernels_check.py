"""Run in a subprocess with 4 fake CPU devices: the Pallas kernels (the FP8 GeGLU's scaling in
`quant.fp8_mlp`, the soft-cap attention's forward pass), through Pallas's interpreter, on a
batch split over the devices give the single-device values and gradients, and the compiled
program moves no rows between devices (no all-gather: each device ran its own rows)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pg_jax import sharding
from pg_jax.models import attention, fp8_geglu_kernel, quant


def _value_and_grads(fn, args, cotangent):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * cotangent),
                                      argnums=tuple(range(len(args)))))


def _check(name, fn, args, cotangent, mesh):
    """fn's value and gradients with ``args`` split over the mesh equal those on one device
    (within float32 rounding: XLA may pick other loop orders for the smaller shapes)."""
    step = _value_and_grads(fn, args, cotangent)
    one = jax.devices()[0]
    want_value, want_grads = step(*jax.device_put((args, cotangent), one)[0])
    rows = NamedSharding(mesh, PartitionSpec("data"))
    split = jax.device_put(args, rows)
    value, grads = step(*split)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, err_msg=name)
    for g, w in zip(grads, want_grads):
        assert g.sharding.spec[:1] == ("data",), (name, g.sharding)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    hlo = step.lower(*split).compile().as_text()
    assert "all-gather" not in hlo, f"{name}: the compiled step gathers rows"
    print(f"{name}: sharded equals one device, no all-gather")


def main():
    assert jax.device_count() == 4, jax.devices()
    mesh = sharding.make_mesh([("data", -1)])
    rng = np.random.default_rng(0)

    # The FP8 MLP with its kernels (the interpreter), at a size the CPU runs quickly.
    fp8_geglu_kernel.supports = lambda width: True
    quant.FP8_MIN_ROWS = quant.FEW_ROWS
    d, f = 32, 64
    mlp = quant.quantize_tree({"llm": {"layers": {"mlp": {
        "gating_einsum": rng.normal(0, 0.2, (1, 2, d, f)).astype(np.float32),
        "linear": rng.normal(0, 0.2, (1, f, d)).astype(np.float32)}}}}, "float8")
    gating, linear = (quant.QArray(w.q[0], w.scale[0])  # one layer of the stack
                      for w in mlp["llm"]["layers"]["mlp"].values())
    x = jnp.asarray(rng.normal(0, 1, (8, 30, d)), jnp.float32)
    assert quant.fp8_mlp_applies(x, gating, linear)
    _check("fp8_mlp", lambda x: quant.fp8_mlp(x, gating, linear), (x,),
           jnp.asarray(rng.normal(0, 1, (8, 30, d)), jnp.float32), mesh)

    # The soft-cap attention (Pallas forward kernel, einsum backward), a prefix-LM mask.
    b, t, n, kv, h = 8, 40, 4, 2, 16
    q, k, v = (jnp.asarray(rng.normal(0, 1, (b, t, heads, h)), jnp.float32)
               for heads in (n, kv, kv))
    prefix = rng.integers(1, t, b)
    mask = jnp.asarray((np.arange(t)[None, None, :] <= np.maximum(
        np.arange(t)[None, :, None], prefix[:, None, None] - 1)))
    attend = lambda q, k, v: attention.attend(q, k, v, mask, softcap=20.0,  # noqa: E731
                                              implementation="pallas")
    _check("soft-cap attention", attend, (q, k, v),
           jnp.asarray(rng.normal(0, 1, (b, t, n, h)), jnp.float32), mesh)
    print("SHARDED_KERNELS_OK")


if __name__ == "__main__":
    main()
