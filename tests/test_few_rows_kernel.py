"""The one-row 8-bit kernel (`pg_jax.models.few_rows_kernel`), run through Pallas's interpreter:
its products, and the batch-1 decode that `quant.einsum` sends through it on a GPU."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pg_jax
from pg_jax.models import few_rows_kernel, quant
from tests import tiny_model


def _values(rng, shape, fmt):
    dtype, top = quant.FORMATS[fmt]
    return jnp.asarray(np.clip(np.round(rng.normal(0, top / 3, shape)), -top, top), dtype)


@pytest.mark.parametrize("fmt", ["int8", "float8"])
@pytest.mark.parametrize("g,k,n,layout,config", [
    (1, 512, 256, "kn", None),  # the default tiling
    (2, 256, 384, "kn", few_rows_kernel.Config(block_n=128, block_k=64, splits=2)),  # gate|up
    (1, 512, 192, "nk", few_rows_kernel.Config(block_n=64, block_k=128, splits=4)),  # embedding
    (1, 144, 64, "kn", few_rows_kernel.Config(block_n=32, block_k=16, splits=1)),  # 9 chunks of 16
    (1, 288, 96, "nk", None),  # 9 chunks of 32, [N, K]
])
def test_kernel_is_the_scaled_product(fmt, g, k, n, layout, config):
    """``(x @ q) * scale`` for each of G weights, whatever the tiling: splits of K summed once,
    each column scaled once, [N, K] tables read as their transpose."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0, 1, (g, k)), jnp.bfloat16)
    q = _values(rng, (g, k, n) if layout == "kn" else (g, n, k), fmt)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, (g, n)), jnp.float32)
    got = few_rows_kernel.matmul(x, q, scale, w_layout=layout, config=config, interpret=True)
    qf = np.asarray(q.astype(jnp.float32))
    want = np.einsum("gk,gkn->gn" if layout == "kn" else "gk,gnk->gn",
                     np.asarray(x.astype(jnp.float32)), qf) * np.asarray(scale)
    assert got.shape == (g, n) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_tilings_cover_the_models_weights():
    """Every PaliGemma 1/2 3B decode weight tiles (so none falls back to XLA), split until the
    grid fills the GPU; a dimension with no power-of-two divisor of 16 does not."""
    for g, k, n, layout in [(1, 2048, 2560, "kn"), (1, 2048, 2048, "kn"), (2, 2048, 16384, "kn"),
                            (1, 16384, 2048, "kn"), (1, 2048, 257152, "nk"),
                            (1, 2304, 4096, "kn"), (2, 2304, 9216, "kn"), (1, 9216, 2304, "kn")]:
        c = few_rows_kernel.config_for(g, k, n, layout)
        assert c is not None and k % (c.splits * c.block_k) == 0 and n % c.block_n == 0
        chunks = few_rows_kernel.chunks(k)
        programs = g * chunks * c.splits * n // c.block_n
        assert programs >= few_rows_kernel.TARGET_PROGRAMS or k // chunks // c.splits == c.block_k
    assert few_rows_kernel.config_for(1, 128, 97, "nk") is None


@pytest.mark.parametrize("fmt", ["int8", "float8"])
def test_batch_one_decode_runs_every_8bit_product_through_the_kernel(fmt, monkeypatch):
    """As on a GPU (the interpreter standing in): a batch-1 decode's products by the 8-bit
    q/k/v, output, gate|up, MLP-out weights and the tied embedding all take the kernel, and the
    greedy tokens are XLA's."""
    model, params = tiny_model.make("tiny_pg1", vocab_size=112)  # 112 tiles; 97 would not
    dec = pg_jax.decoding_params(model, quant.quantize_tree(params, fmt))
    rng = np.random.default_rng(3)
    res = model.img["image_size"]
    prompt = {"image": rng.uniform(-1, 1, (1, res, res, 3)).astype(np.float32),
              "text": rng.integers(3, 100, (1, 5)).astype(np.int32)}
    want = pg_jax.decode(model, dec, prompt, max_decode_len=4, eos_id=-1)

    calls = []
    kernel = few_rows_kernel.matmul

    def recording(x, q, scale, **kw):
        calls.append((q.shape, kw.get("w_layout", "kn")))
        return kernel(x, q, scale, interpret=True, **kw)

    monkeypatch.setattr(few_rows_kernel, "supports",
                        lambda dtype, g, k, n, w_layout="kn": True)
    monkeypatch.setattr(few_rows_kernel, "matmul", recording)
    jax.clear_caches()  # decode's jitted loop was traced with the CPU's products above
    try:
        got = pg_jax.decode(model, dec, prompt, max_decode_len=4, eos_id=-1)
    finally:
        jax.clear_caches()
    np.testing.assert_array_equal(got, want)
    w, f = model.llm["width"], model.llm["mlp_dim"]
    qkv = (model.llm["num_heads"] + 2 * model.llm["num_kv_heads"]) * model.llm["head_dim"]
    assert set(calls) == {((1, w, qkv), "kn"), ((1, w, w), "kn"), ((2, w, f), "kn"),
                          ((1, f, w), "kn"), ((1, 112, w), "nk")}


def test_several_rows_keep_xlas_product(monkeypatch):
    monkeypatch.setattr(few_rows_kernel, "supports", lambda *a, **k: True)
    monkeypatch.setattr(few_rows_kernel, "matmul", functools.partial(pytest.fail, "kernel"))
    w = quant.quantize("llm/layers/mlp/linear", jnp.ones((1, 64, 32)), "int8")
    w = quant.QArray(w.q[0], w.scale[0])
    y = quant.einsum("...K,KN->...N", jnp.ones((2, 1, 64)), w)
    np.testing.assert_allclose(y, 64.0, rtol=1e-6)


@pytest.mark.parametrize("backend,capability,dtype,shape,want", [
    ("gpu", "9.0", jnp.float8_e4m3fn, (1, 2048, 2560), True),  # H100/H200
    ("gpu", "8.9", jnp.float8_e4m3fn, (1, 2048, 2560), True),  # L4
    ("gpu", "7.5", jnp.float8_e4m3fn, (1, 2048, 2560), False),  # Kaggle's T4: no FP8
    ("gpu", "9.0", jnp.int8, (1, 2048, 2560), False),  # int8 measured no faster
    ("gpu", "9.0", jnp.float8_e4m3fn, (1, 2048, 97), False),  # does not tile
    ("cpu", None, jnp.float8_e4m3fn, (1, 2048, 2560), False),
])
def test_the_kernel_applies_to_float8_on_fp8_gpus(backend, capability, dtype, shape, want,
                                                   monkeypatch):
    device = types.SimpleNamespace(platform=backend, device_kind="fake",
                                   compute_capability=capability)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "devices", lambda *a: [device])
    assert few_rows_kernel.supports(dtype, *shape) is want
