"""The GeGLU kernels with fused FP8 scaling (`pg_jax.models.fp8_geglu_kernel`) and the float8
MLP built on them (`quant.fp8_mlp`), through Pallas's interpreter on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pg_jax.models import fp8_geglu_kernel as kernel
from pg_jax.models import gemma, quant


def _gelu_parts(x):
    """gelu_tanh and its derivative in float64, from the tanh form."""
    z = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    t = np.tanh(z)
    dz = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x**2)
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * dz


def _check_scaled(values, scales, want, dtype, top):
    """``values * scales`` is ``want`` rounded into ``dtype`` with one scale per row, the
    row's max |want| / top."""
    values = np.asarray(values.astype(jnp.float32), np.float64)
    scales = np.asarray(scales, np.float64)
    amax = np.abs(want).max(axis=1)
    np.testing.assert_allclose(scales, np.where(amax > 0, amax / top, 1.0), rtol=1e-5)
    rounded = np.asarray(jnp.asarray(want / scales[:, None], jnp.float32).astype(dtype)
                         .astype(jnp.float32), np.float64)
    # float32 arithmetic may land a value on the other side of a rounding tie.
    assert np.mean(values == rounded) > 0.99
    ulp = 2.0 ** -(3 if dtype == jnp.float8_e4m3fn else 2)  # mantissa bits
    np.testing.assert_allclose(values, rounded, rtol=ulp, atol=2.0 ** -16)
    assert np.abs(values).max() <= top


@pytest.mark.parametrize("rows,width,config", [
    (6, 64, kernel.Config(block_r=2, block_c=16)),   # two passes over 4 column blocks
    (5, 64, kernel.Config(block_r=2, block_c=64)),   # one block: computed once; 5 rows -> 1
    (4, 48, kernel.Config(block_r=1, block_c=64)),   # 3 x 16: blocks of the power-of-two part
    (6, 48, kernel.Config(block_r=2, block_c=16, one_pass=True)),  # 3 blocks held, one read
])
def test_kernels_scale_each_row_of_the_geglu_and_its_gradients(rows, width, config):
    """The kernels take the FP8 products' unscaled outputs and their row and channel scales;
    each output row is its values in 8 bits with the row's max |value| / top as scale."""
    rng = np.random.default_rng(0)
    gate = rng.normal(0, 1.5, (rows, width)).astype(np.float32)
    up = rng.normal(0, 1, (rows, width)).astype(np.float32)
    dh = rng.normal(0, 1, (rows, width)).astype(np.float32)
    gate[1] *= 20.0  # rows of very different ranges
    dh[2] = 0.0      # an all-zero row: scale 1, zeros
    row_scale, dh_scale = (rng.uniform(0.5, 2.0, rows).astype(np.float32) for _ in range(2))
    dh_scale *= 1e-3
    gate_s, up_s = (rng.uniform(0.5, 2.0, width).astype(np.float32) for _ in range(2))
    gate, up, dh = (jnp.asarray(a, jnp.bfloat16) for a in (gate, up, dh))
    g64, u64, d64 = (np.asarray(a.astype(jnp.float32), np.float64) for a in (gate, up, dh))
    g64, u64 = g64 * row_scale[:, None] * gate_s, u64 * row_scale[:, None] * up_s
    d64 = d64 * dh_scale[:, None]
    gelu, dgelu = _gelu_parts(g64)
    scales = [jnp.asarray(a) for a in (row_scale, gate_s, up_s)]

    h, h_scale = kernel.forward(gate, up, *scales, config=config, interpret=True)
    assert h.dtype == jnp.float8_e4m3fn and h_scale.shape == (rows,)
    _check_scaled(h, h_scale, gelu * u64, jnp.float8_e4m3fn, kernel.E4M3_MAX)

    d_gate, s_gate, d_up, s_up = kernel.backward(gate, up, dh, scales[0], jnp.asarray(dh_scale),
                                                 *scales[1:], config=config, interpret=True)
    assert d_gate.dtype == d_up.dtype == jnp.float8_e5m2
    _check_scaled(d_gate, s_gate, d64 * u64 * dgelu * gate_s, jnp.float8_e5m2, kernel.E5M2_MAX)
    _check_scaled(d_up, s_up, d64 * gelu * up_s, jnp.float8_e5m2, kernel.E5M2_MAX)
    assert float(s_gate[2]) == float(s_up[2]) == 1.0
    assert not np.any(np.asarray(d_gate[2].astype(jnp.float32)))


def _mlp_weights(rng, d, f):
    gating = rng.normal(0, 0.2, (2, d, f)).astype(np.float32)
    linear = rng.normal(0, 0.2, (f, d)).astype(np.float32)
    params = quant.quantize_tree({"llm": {"layers": {"mlp": {
        "gating_einsum": gating[None], "linear": linear[None]}}}}, "float8")
    mlp = params["llm"]["layers"]["mlp"]
    unstack = lambda w: quant.QArray(w.q[0], w.scale[0])  # noqa: E731
    return gating, linear, unstack(mlp["gating_einsum"]), unstack(mlp["linear"])


@pytest.fixture
def kernels_on(monkeypatch):
    """The fused path on the CPU (the kernels in the interpreter), at these small sizes."""
    monkeypatch.setattr(kernel, "supports", lambda width: True)
    monkeypatch.setattr(quant, "FP8_MIN_ROWS", quant.FEW_ROWS)


def test_fp8_mlp_equals_its_three_fp8_products(kernels_on):
    """Forward and dx equal the unfused float8 MLP (three `fp8_einsum` products around
    `gemma.gelu_gated`) up to e4m3/e5m2 rounding ties, and the exact MLP up to FP8's rounding."""
    rng = np.random.default_rng(1)
    d, f = 32, 64
    gating, linear, qg, ql = _mlp_weights(rng, d, f)
    x = rng.normal(0, 1, (3, 60, d)).astype(np.float32)
    x[0] *= 10.0
    x = jnp.asarray(x)
    r = jnp.asarray(rng.normal(0, 1, (3, 60, d)).astype(np.float32))

    def unfused(x):
        gate, up = (quant.einsum("...D,DF->...F", x, qg[i]) for i in (0, 1))
        return quant.einsum("...F,FD->...D", gemma.gelu_gated(gate, up), ql)

    def exact(x):
        gate, up = x @ gating[0], x @ gating[1]
        return (jax.nn.gelu(gate, approximate=True) * up) @ linear

    def value_and_dx(fn):
        return jax.value_and_grad(lambda x: jnp.sum(fn(x) * r))(x), fn(x)

    (_, dx), y = value_and_dx(lambda x: quant.fp8_mlp(x, qg, ql))
    (_, dx_unfused), y_unfused = value_and_dx(unfused)
    (_, dx_exact), y_exact = value_and_dx(exact)
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))  # noqa: E731
    # The unfused path rounds d_gate and d_up to bf16 before e5m2 (2 mantissa bits), so its
    # rounding ties land differently: 1.4e-3 and 7.2e-3 on jax 0.7.2, less on 0.10.
    assert rel(y, y_unfused) < 5e-3 and rel(dx, dx_unfused) < 2e-2
    assert 0.01 < rel(y, y_exact) < 0.08 and rel(dx, dx_exact) < 0.15


def test_feed_forward_takes_the_kernels_only_where_they_apply(kernels_on, monkeypatch):
    calls = []
    forward = kernel.forward
    monkeypatch.setattr(kernel, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    rng = np.random.default_rng(2)
    _, _, qg, ql = _mlp_weights(rng, 32, 64)
    x = jnp.asarray(rng.normal(0, 1, (2, 70, 32)).astype(np.float32))
    params = {"params": {"gating_einsum": qg, "linear": ql}}
    y = gemma.FeedForward(64).apply(params, x)
    assert len(calls) == 1
    np.testing.assert_allclose(y, quant.fp8_mlp(x, qg, ql), rtol=1e-6, atol=1e-6)
    gemma.FeedForward(64).apply(params, x[:, :60])  # 120 rows: under FP8_MIN_ROWS
    gemma.FeedForward(64, split_gating=False).apply(params, x)  # the decode layout
    assert len(calls) == 1 + 1  # the fp8_mlp call above
