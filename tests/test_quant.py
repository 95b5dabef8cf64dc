"""8-bit frozen weights (``frozen_dtype="int8"`` / ``"float8"``): rounding, FP8 products, logit
drift, training, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pg_jax
from pg_jax import optim, sharding
from pg_jax import state as state_lib
from pg_jax import step as step_lib
from pg_jax.models import exporter, loader, lora, paligemma, quant
from tests import tiny_model, tiny_setup


def test_per_channel_rounding_is_within_half_a_step():
    w = np.random.default_rng(0).normal(0, 1, (3, 2, 16, 8)).astype(np.float32)  # kv [L,2,D,H]
    w[1, 0, :, 3] = 0.0  # an all-zero channel must not divide by zero
    q = quant.quantize("llm/layers/attn/kv_einsum/w", w)
    assert q.q.dtype == jnp.int8 and q.scale.shape == (3, 2, 1, 8)  # one scale per (layer, k|v, head dim)
    err = np.abs(np.asarray(q.astype(jnp.float32)) - w)
    assert np.all(err <= np.asarray(q.scale) / 2 + 1e-7)
    assert np.all(np.asarray(q.astype(jnp.float32))[1, 0, :, 3] == 0)


def _state(model, ckpt, frozen_dtype, freeze="lora"):
    opt = optim.make(tiny_setup.opt_config(freeze), optim.unflatten(loader.param_shapes(model)), 3)
    mesh = sharding.make_mesh([("data", -1)])
    plan = state_lib.plan(model, opt, mesh, [(".*", "replicate()")], frozen_dtype=frozen_dtype,
                          loss_scale=False)
    return opt, plan, state_lib.materialize(plan, model, init_path=ckpt,
                                            init_missing=(lora.FACTOR_PATTERN,))


@pytest.mark.newest_only  # a numerics measure: stack 1 (the newest releases) reports it
@pytest.mark.parametrize("variant", ["tiny_pg1", "tiny_pg2"])
def test_int8_logit_drift_is_of_the_order_of_bfloat16s(variant, tmp_path, monkeypatch):
    # The tiny model's 26 tokens take the paths a real model's thousands do (`quant.einsum`):
    # float8 runs its FP8 products, int8 dequantizes.
    monkeypatch.setattr(quant, "FEW_ROWS", 1)
    monkeypatch.setattr(quant, "FP8_MIN_ROWS", 1)
    base, params = tiny_model.make(variant)
    ckpt = str(tmp_path / "base.npz")
    exporter.save_npz(params, ckpt)
    model = paligemma.Model(img=dict(base.img), llm=dict(base.llm),
                            lora={"rank": 2, "targets": "attn_mlp"})
    rng = np.random.default_rng(0)
    res = base.img["image_size"]
    image = rng.uniform(-1, 1, (2, res, res, 3)).astype(np.float32)
    text = rng.integers(3, 90, (2, 9)).astype(np.int32)
    mask_ar = np.zeros_like(text)
    ref, _ = base.apply({"params": params}, image, text, mask_ar)
    drift = {}
    for fd in ("bfloat16", "int8", "float8"):
        _, plan, st = _state(model, ckpt, fd)
        logits, _ = model.apply({"params": st["params"]}, image, text, mask_ar)
        drift[fd] = float(jnp.abs(logits - ref).max())
    stored = {k: v for k, v in plan.param_shapes.items() if quant.is_quantized(v)}
    assert set(stored) == {k for k in quant.QUANTIZABLE if k in plan.param_shapes}
    print(f"{variant}: max |logit| {float(jnp.abs(ref).max()):.2f}, max drift bf16 "
          f"{drift['bfloat16']:.3f}, int8 {drift['int8']:.3f}, float8 {drift['float8']:.3f}")
    # Measured (max |logit| 2.1-2.2; these random tiny models amplify any rounding): bf16 0.17,
    # int8 0.40 for PaliGemma 1; bf16 0.36, int8 0.62 for PaliGemma 2 (the embedding in int8 too).
    assert drift["int8"] < 3 * drift["bfloat16"]
    assert drift["int8"] < 0.5 * float(jnp.abs(ref).max())
    # float8 rounds weights and activations to e4m3's 3 mantissa bits against bf16's 7, so 16x
    # bf16's drift is the scale to expect; measured 6.8x (PG1: 1.11) and 4.0x (PG2: 1.44).
    assert drift["float8"] < 16 * drift["bfloat16"]


def _rounded(x, dtype=None):
    """``x`` rounded to ``dtype`` by XLA's conversion (as the code rounds), back in float32."""
    x = jnp.asarray(x)
    return np.asarray((x if dtype is None else x.astype(dtype)).astype(jnp.float32))


@pytest.mark.parametrize("eqn,x_shape,key,w_shape", [
    ("BTD,CKDH->CBTKH", (3, 50, 16), "llm/layers/attn/kv_einsum/w", (2, 6, 16, 8)),
    ("...F,FD->...D", (2, 3, 32, 32), "llm/layers/mlp/linear", (32, 12)),
])
def test_fp8_product_is_the_product_of_its_scaled_fp8_operands(eqn, x_shape, key, w_shape,
                                                               monkeypatch):
    """Forward: x scaled per row (its max |x| over the contracted axes) and w per output channel
    into e4m3, their product, both scales applied; backward dx: the gradient times the weight's
    channel scales, scaled per row into e5m2, times the e4m3 weight. Each is checked against
    that recipe computed by hand in float32, and against the exact product."""
    monkeypatch.setattr(quant, "FP8_MIN_ROWS", quant.FEW_ROWS)  # these 150 and 192 rows
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, x_shape).astype(np.float32)
    x[0] *= 30.0  # rows of very different ranges: one scale per row keeps both precise
    w = rng.normal(0, 0.1, w_shape).astype(np.float32)
    qw = quant.quantize(key, w[None], "float8")
    qw = quant.QArray(qw.q[0], qw.scale[0])
    assert qw.q.dtype == jnp.float8_e4m3fn and qw.scale.shape[:-1] != w_shape[:-1]
    explicit = quant._explicit(eqn, x.ndim)
    x_labels, w_labels, out = quant._parse(explicit)
    w_hat = _rounded(qw.q) * np.asarray(qw.scale)  # the stored weight, dequantized

    contracted = tuple(i for i, c in enumerate(x_labels) if c not in out)
    sx = np.abs(x).max(axis=contracted, keepdims=True) / 448.0
    x_hat = _rounded(x / sx, jnp.float8_e4m3fn) * sx
    y = quant.einsum(eqn, jnp.asarray(x), qw)
    np.testing.assert_allclose(y, np.einsum(explicit, x_hat, w_hat), rtol=2e-5, atol=2e-5)
    exact = np.einsum(explicit, x, w)
    assert 0.01 < np.linalg.norm(y - exact) / np.linalg.norm(exact) < 0.06  # e4m3's rounding

    g = rng.normal(0, 1, y.shape).astype(np.float32)
    dx = jax.vjp(lambda x: quant.einsum(eqn, x, qw), jnp.asarray(x))[1](jnp.asarray(g))[0]
    gs = g * np.asarray(quant._align(qw.scale, w_labels, out))
    g_axes = tuple(i for i, c in enumerate(out) if c not in x_labels)
    sg = np.abs(gs).max(axis=g_axes, keepdims=True) / 57344.0
    g_hat = _rounded(gs / sg, jnp.float8_e5m2) * sg
    want = np.einsum(f"{out},{w_labels}->{x_labels}", g_hat, _rounded(qw.q))
    np.testing.assert_allclose(dx, want, rtol=2e-5, atol=2e-5)
    exact_dx = np.einsum(f"{out},{w_labels}->{x_labels}", g, w)
    assert np.linalg.norm(dx - exact_dx) / np.linalg.norm(exact_dx) < 0.1  # e5m2: 2 mantissa bits


# float8 on the newest stack only (.ci/run): the Kaggle GPU image's T4/P100 have no FP8 units,
# and the trainer refuses float8 there; the FP8 products' test above runs on both stacks.
@pytest.mark.parametrize("fmt", ["int8", pytest.param("float8", marks=pytest.mark.newest_only)])
def test_8bit_frozen_weights_train_and_decode(fmt, tmp_path, monkeypatch):
    monkeypatch.setattr(quant, "FEW_ROWS", 1)  # a real model's training paths (see above)
    monkeypatch.setattr(quant, "FP8_MIN_ROWS", 1)
    base, params = tiny_model.make("tiny_pg1")
    ckpt = str(tmp_path / "base.npz")
    exporter.save_npz(params, ckpt)
    model = paligemma.Model(img=dict(base.img), llm=dict(base.llm), lora={"rank": 2})
    rng = np.random.default_rng(1)
    res = base.img["image_size"]
    image = rng.uniform(-1, 1, (4, res, res, 3)).astype(np.float32)
    text = rng.integers(3, 90, (4, 9)).astype(np.int32)
    mask_ar = np.zeros_like(text)
    mask_ar[:, 5:] = 1
    batch = {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_ar,
             "mask_input": np.ones_like(text)}
    losses = {}
    for fd in ("float32", fmt):
        opt, _, st = _state(model, ckpt, fd)
        update = jax.jit(step_lib.make_update_fn(model, opt, loss_len=3))
        for _ in range(4):
            st, m = update(st, jax.random.PRNGKey(0), batch)
        losses[fd] = float(m["training_loss"])
        flat = optim.flatten(st["params"])
        assert quant.is_quantized(flat["llm/layers/mlp/linear"]) == (fd == fmt)
        assert quant.is_quantized(flat[quant.EMBEDDING]) == (fd == fmt)
    assert abs(losses[fmt] - losses["float32"]) < 0.05 * losses["float32"], losses
    # The decode loop dequantizes once and reads plain arrays: the same tokens as decoding the
    # dequantized weights.
    prompt = {"image": image, "text": text[:, :5]}
    plain = quant.dequantize_tree(st["params"], jnp.float32)
    np.testing.assert_array_equal(pg_jax.decode(model, st["params"], prompt, max_decode_len=4),
                                  pg_jax.decode(model, plain, prompt, max_decode_len=4))
    assert not quant.has_quantized(pg_jax.decoding_params(model, st["params"]))


def test_int8_embedding_looks_up_and_scores_as_its_dequantized_table():
    """One scale per token: the lookup reads its row's scale, the tied logits apply it after
    the product (no dequantized table), and both equal the dequantized table's."""
    from pg_jax.models import gemma

    table = np.random.default_rng(2).normal(0, 1, (11, 6)).astype(np.float32)
    q = quant.quantize(quant.EMBEDDING, table)
    assert q.scale.shape == (11, 1)
    emb = gemma.Embedder(vocab_size=11, width=6)
    tokens = np.array([[0, 3, 10, 3]])
    x = np.random.default_rng(3).normal(0, 1, (1, 4, 6)).astype(np.float32)
    for method, arg in ((lambda m, t: m.encode(t, jnp.float32), tokens),
                        (lambda m, v: m.decode(v), x)):
        got = emb.apply({"params": {"input_embedding": q}}, arg, method=method)
        want = emb.apply({"params": {"input_embedding": q.astype(jnp.float32)}}, arg, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(q.astype(jnp.float32), table)  # it is quantized (to 1/254 of the max)


def test_benchmark_random_state_has_the_plans_stored_forms():
    """state.materialize_random (the benchmarks' weights): int8 leaves made layer by layer have
    the plan's shapes, LoRA B is zero, so the benchmark trains the trainer's exact state."""
    base, _ = tiny_model.make("tiny_pg1")
    model = paligemma.Model(img=dict(base.img), llm=dict(base.llm), lora={"rank": 2})
    opt = optim.make(tiny_setup.opt_config("lora"), optim.unflatten(loader.param_shapes(model)), 3)
    plan = state_lib.plan(model, opt, sharding.make_mesh([("data", -1)]), [(".*", "replicate()")],
                          frozen_dtype="int8", loss_scale=False)
    flat = optim.flatten(state_lib.materialize_random(plan)["params"])
    assert jax.tree.structure(flat) == jax.tree.structure(plan.param_shapes)
    for k, s in plan.param_shapes.items():
        for got, want in zip(jax.tree.leaves(flat[k]), jax.tree.leaves(s), strict=True):
            assert (got.shape, got.dtype) == (want.shape, want.dtype), k
    w = flat["llm/layers/mlp/linear"]
    assert quant.is_quantized(w) and int(jnp.abs(w.q).max()) == 127  # per-channel full range
    assert not np.any(np.asarray(flat["llm/layers/attn/q_einsum/w_lora_b"]))


# Stack 2 (Kaggle's pins) runs int8 on tiny_pg1; float8 (no FP8 on Kaggle's GPUs) and the
# second architecture run on the newest stack (.ci/run).
@pytest.mark.parametrize("variant", ["tiny_pg1", pytest.param("tiny_pg2", marks=pytest.mark.newest_only)])
@pytest.mark.parametrize("fmt", ["int8", pytest.param("float8", marks=pytest.mark.newest_only)])
def test_8bit_weights_decode_as_their_dequantized_weights(variant, fmt):
    """Without LoRA to merge, the decode layout keeps the frozen weights in 8 bits (unstacked,
    q/k/v fused, values and scales alike) and the loop multiplies their values, scaling after
    the product: the same logits and tokens as decoding the dequantized weights."""
    model, params = tiny_model.make(variant)
    quantized = quant.quantize_tree(params, fmt)
    plain = quant.dequantize_tree(quantized, jnp.float32)
    dec = pg_jax.decoding_params(model, quantized)
    assert quant.is_quantized(dec["llm"]["layers_0"]["attn"]["qkv_fused"])
    assert quant.is_quantized(dec["llm"]["layers_0"]["mlp"]["linear"])
    rng = np.random.default_rng(4)
    res = model.img["image_size"]
    prompt = {"image": rng.uniform(-1, 1, (2, res, res, 3)).astype(np.float32),
              "text": rng.integers(3, 90, (2, 5)).astype(np.int32)}
    got = pg_jax.decode(model, dec, prompt, max_decode_len=6, eos_id=-1)
    np.testing.assert_array_equal(got, pg_jax.decode(model, plain, prompt, max_decode_len=6,
                                                     eos_id=-1))
    # The prefill's logits, as numbers: rounding differences only (float32 throughout), where
    # a scale left out or applied twice moves them by a whole factor.
    step_model = model.clone(llm={**model.llm, "scan": False, "fused_qkv": True,
                                  "split_gating": False})
    text = jnp.asarray(prompt["text"])
    args = (prompt["image"], text, jnp.ones(text.shape, bool), jnp.zeros(text.shape, jnp.int32))
    want, _ = step_model.apply({"params": pg_jax.decoding_params(model, plain)}, *args,
                               cache_size=32, method=paligemma.Model.prefill)
    got, _ = step_model.apply({"params": dec}, *args, cache_size=32,
                              method=paligemma.Model.prefill)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("fmt", ["int8", "float8"])
def test_the_product_path_follows_the_rows(fmt, monkeypatch):
    """`quant.einsum` by rows: under FEW_ROWS the 8-bit values times the output's scale, then
    the dequantized weight, both the dequantized weight's product up to float32 rounding; from
    FP8_MIN_ROWS a float8 weight's product rounds the activation to e4m3 and moves by that."""
    monkeypatch.setattr(quant, "FP8_MIN_ROWS", 2 * quant.FEW_ROWS)  # a small test
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.1, (2, 32, 24)).astype(np.float32)  # gating [2, D, F]
    qw = quant.quantize("llm/layers/mlp/gating_einsum", w[None], fmt)
    qw = quant.QArray(qw.q[0], qw.scale[0])
    w_hat = np.asarray(qw.astype(jnp.float32))
    for rows in (1, quant.FEW_ROWS - 1, quant.FEW_ROWS, quant.FP8_MIN_ROWS):
        x = rng.normal(0, 1, (2, rows, 32)).astype(np.float32)
        y = np.asarray(quant.einsum("K...D,KDF->K...F", jnp.asarray(x), qw))
        err = np.abs(y - np.einsum("KTD,KDF->KTF", x, w_hat)).max() / np.abs(y).max()
        if rows < quant.FP8_MIN_ROWS or fmt == "int8":
            assert err < 1e-5, (rows, err)
        else:
            assert err > 1e-3, (rows, err)  # e4m3 activation rounding
