"""Model semantics: masks, KV cache, logits_at, dtypes, attention kernels, variants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pg_jax.models import attention, gemma, loader, paligemma, variants

VOCAB = 64


def _model(variant="tiny_pg2", res=28, sliding_window=0, **kw):
    cfg = variants.get_config(variant, res=res, vocab_size=VOCAB, **kw).to_dict()
    cfg["llm"]["sliding_window"] = sliding_window
    for tower in ("img", "llm"):  # small and fast
        cfg[tower].update(depth=2)
    cfg["img"].update(width=32, mlp_dim=48, num_heads=2)
    cfg["llm"].update(width=32, mlp_dim=64, head_dim=8)
    return paligemma.Model(**cfg)


def _logits(model, params, *args):
    """Jitted forward (eager flax runs op by op and is slow on CPU)."""
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a)[0])(params, *args)


def _params(model, seed=0, scale=0.3):
    res = model.img["image_size"]
    v = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, res, res, 3)),
                   jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))
    leaves, tree = jax.tree.flatten(v["params"])
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])


def test_make_attn_mask_worked_examples():
    valid = jnp.ones((1, 6), bool)
    causal = paligemma.make_attn_mask(valid, jnp.ones((1, 6), jnp.int32))[0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((6, 6), bool)))

    prefix = paligemma.make_attn_mask(valid, jnp.array([[0, 0, 0, 1, 1, 1]]))[0]
    expected = np.tril(np.ones((6, 6), bool))
    expected[:3, :3] = True  # the prefix is bidirectional
    np.testing.assert_array_equal(prefix, expected)

    padded = paligemma.make_attn_mask(jnp.array([[1, 1, 1, 1, 0, 0]], bool),
                                      jnp.array([[0, 0, 1, 1, 1, 1]]))[0]
    assert not padded[:, 4:].any() and not padded[4:].any()
    np.testing.assert_array_equal(padded[2, :4], [1, 1, 1, 0])


def test_param_counts_of_released_variants():
    # The released PaliGemma 1 3B-224 .npz has 2,923,335,408 parameters in 32 arrays.
    shapes = loader.param_shapes(paligemma.Model(**variants.get_config("pg1_3b").to_dict()))
    assert len(shapes) == 32
    assert sum(int(np.prod(s.shape)) for s in shapes.values()) == 2_923_335_408
    pg2 = loader.param_shapes(paligemma.Model(**variants.get_config("pg2_3b", res=448).to_dict()))
    assert len(pg2) == 34
    assert pg2["img/pos_embedding"].shape == (1, 1024, 1152)
    assert pg2["llm/layers/attn/kv_einsum/w"].shape == (26, 2, 4, 2304, 256)


def test_shape_inference_recovers_every_variant():
    for name in ("pg1_3b", "pg2_3b", "pg2_10b", "pg2_28b"):
        for res in (224, 896):
            cfg = variants.get_config(name, res=res).to_dict()
            shapes = {k: v.shape for k, v in loader.param_shapes(paligemma.Model(**cfg)).items()}
            inferred = loader.infer_config(shapes)
            for tower in ("img", "llm"):
                for key, value in inferred[tower].items():
                    if key != "final_logits_softcap":  # big_vision fine-tunes with 0
                        assert cfg[tower].get(key, value) == value, (name, res, key)
            if name == "pg2_28b":
                assert inferred["llm"]["query_pre_attn_norm"] == "rsqrt_emb_per_head"


@pytest.mark.parametrize("variant", ["tiny_pg1", "tiny_pg2"])
def test_cached_prefill_and_extend_equal_full_forward(variant):
    """A padded batch of different prompt lengths, checked at every decode step."""
    model = _model(variant)
    params = _params(model)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 28, 28, 3)).astype(np.float32)
    lengths = np.array([5, 2, 7])
    prompt_len, steps = 7, 6
    text = np.zeros((3, prompt_len), np.int32)
    for b, n in enumerate(lengths):
        text[b, :n] = rng.integers(2, VOCAB, n)
    prefill = jax.jit(lambda p, *a: model.apply({"params": p}, *a, cache_size=model.num_image_tokens
                                                + 20, method=paligemma.Model.prefill))
    extend = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=paligemma.Model.extend))
    full = jax.jit(lambda p, *a: model.apply({"params": p}, *a)[0])
    logits, cache = prefill(params, image, text, text > 0, np.zeros_like(text))

    # Reference: full forwards of the growing sequences, right-padded to one length.
    seqs = np.zeros((3, prompt_len + steps), np.int32)
    seqs[:, :prompt_len] = text
    for step in range(steps):
        total = lengths + step
        valid = np.arange(seqs.shape[1])[None] < total[:, None]
        mask_ar = (np.arange(seqs.shape[1])[None] >= lengths[:, None]).astype(np.int32)
        ref = full(params, image, seqs, mask_ar, valid)
        ref_last = np.asarray(ref)[np.arange(3), total - 1]
        np.testing.assert_allclose(logits, ref_last, atol=2e-5, err_msg=f"step {step}")
        tokens = np.asarray(jnp.argmax(logits, axis=-1), np.int32)
        seqs[np.arange(3), total] = tokens
        logits, cache = extend(params, tokens, cache)


def test_logits_at_equals_gather_of_full_logits():
    model = _model()
    params = _params(model)
    image = np.zeros((2, 28, 28, 3), np.float32)
    text = np.arange(16, dtype=np.int32).reshape(2, 8) + 2
    mask_ar = np.array([[0] * 4 + [1] * 4] * 2)
    apply = jax.jit(lambda p, *a, **k: model.apply({"params": p}, *a, **k)[0])
    full = apply(params, image, text, mask_ar)
    at = np.array([[3, 5, 7], [4, 4, 6]])
    part = apply(params, image, text, mask_ar, logits_at=at)
    np.testing.assert_allclose(part, np.take_along_axis(np.asarray(full), at[..., None], 1),
                               atol=1e-6)


def test_xla_attention_equals_einsum():
    model = _model("tiny_pg1")
    params = _params(model)
    image = np.random.default_rng(1).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    text = np.arange(20, dtype=np.int32).reshape(2, 10) + 2
    mask_ar = np.array([[0] * 6 + [1] * 4] * 2)
    ref = _logits(model, params, image, text, mask_ar)
    out = _logits(_model("tiny_pg1", attention_impl="xla"), params, image, text, mask_ar)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    with pytest.raises(ValueError, match="soft-cap"):
        _logits(_model("tiny_pg2", attention_impl="xla"), _params(_model()), image, text,
                mask_ar)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.15), ("float16", 0.02)])
def test_low_precision_compute_stays_close(dtype, tol):
    model = _model()
    params = _params(model, scale=0.1)
    image = np.random.default_rng(2).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    text = np.arange(20, dtype=np.int32).reshape(2, 10) + 2
    mask_ar = np.array([[0] * 6 + [1] * 4] * 2)
    ref = _logits(model, params, image, text, mask_ar)
    low = _logits(_model(dtype=dtype), params, image, text, mask_ar)
    assert low.dtype == jnp.float32  # logits stay float32
    assert np.isfinite(np.asarray(low)).all()
    assert np.abs(np.asarray(low) - np.asarray(ref)).max() < tol * np.abs(np.asarray(ref)).max()


def test_sliding_window_limits_attention_on_alternate_layers():
    image = np.random.default_rng(3).uniform(-1, 1, (1, 28, 28, 3)).astype(np.float32)
    text = np.arange(12, dtype=np.int32)[None] + 2
    mask_ar = np.ones((1, 12), np.int32)
    model = _model()
    params = _params(model)
    ref = _logits(model, params, image, text, mask_ar)
    wide = _logits(_model(sliding_window=1000), params, image, text, mask_ar)
    np.testing.assert_allclose(wide, ref, atol=1e-6)  # window longer than the sequence
    narrow = _logits(_model(sliding_window=3), params, image, text, mask_ar)
    assert np.abs(np.asarray(narrow) - np.asarray(ref)).max() > 1e-3


def test_remat_and_unroll_do_not_change_the_function():
    model = _model()
    params = _params(model)
    image = np.zeros((1, 28, 28, 3), np.float32)
    text = np.arange(6, dtype=np.int32)[None] + 2
    mask_ar = np.array([[0, 0, 0, 1, 1, 1]])

    def loss(m, p):
        return jnp.sum(m.apply({"params": p}, image, text, mask_ar)[0] ** 2)

    ref = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    other = _model(remat_policy="nothing_saveable", scan_unroll=2)
    got = jax.jit(jax.grad(lambda p: loss(other, p)))(params)
    # Gradients reach 400 here; the ViT's key bias has a true gradient of 0 (softmax ignores
    # a constant added to every key) and gets float32 rounding noise of ~1e-5 from each order.
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(4, 1), (4, 2), (4, 4)])
def test_fused_qkv_attention_equals_the_checkpoint_layout(heads, kv_heads):
    # MQA (PaliGemma 1), GQA (PaliGemma 2) and MHA (a single qkv_einsum tensor).
    kw = dict(num_heads=heads, num_kv_heads=kv_heads, head_dim=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
    mask = jnp.tril(jnp.ones((5, 5), bool))[None].repeat(2, 0)
    plain = gemma.Attention(**kw)
    params = plain.init(jax.random.PRNGKey(1), x, pos, mask, None, None)["params"]
    assert ("qkv_einsum" in params) == (heads == kv_heads)
    want, (k, v) = plain.apply({"params": params}, x, pos, mask, None, None)
    fused = gemma.Attention(**kw, fused_qkv=True)
    got, (k2, v2) = fused.apply({"params": gemma.fuse_qkv(params)}, x, pos, mask, None, None)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(k2, k, atol=1e-5)
    np.testing.assert_allclose(v2, v, atol=1e-5)


def test_gelu_gated_gradient_equals_autodiff():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    gate = 4 * jax.random.normal(keys[0], (8, 64))  # tanh saturates on both sides
    up = jax.random.normal(keys[1], (8, 64))
    cot = jax.random.normal(keys[2], (8, 64))

    def plain(g, u):
        return jnp.sum(jax.nn.gelu(g, approximate=True) * u * cot)

    def custom(g, u):
        return jnp.sum(gemma.gelu_gated(g, u) * cot)

    np.testing.assert_allclose(custom(gate, up), plain(gate, up), rtol=1e-6)
    want = jax.grad(plain, (0, 1))(gate, up)
    got = jax.jit(jax.grad(custom, (0, 1)))(gate, up)
    for a, b in zip(got, want):  # values up to ~5; float32 rounding differs in the tails
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # bfloat16 in, bfloat16 out: computed in float32 inside, so within bfloat16's rounding.
    got16 = jax.grad(custom, (0, 1))(gate.astype(jnp.bfloat16), up.astype(jnp.bfloat16))
    for a, b in zip(got16, want):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(np.float32), b, rtol=3e-2, atol=3e-2)


def test_split_and_batched_gating_are_the_same_function():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    split = gemma.FeedForward(mlp_dim=24)
    batched = gemma.FeedForward(mlp_dim=24, split_gating=False)
    params = split.init(jax.random.PRNGKey(1), x)

    def loss(m, p, x):
        return jnp.sum(jnp.sin(m.apply(p, x)))

    np.testing.assert_allclose(batched.apply(params, x), split.apply(params, x), atol=1e-5)
    want = jax.grad(lambda p, x: loss(batched, p, x), (0, 1))(params, x)
    got = jax.grad(lambda p, x: loss(split, p, x), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _plain_attention(q, k, v, mask, softcap):
    """The einsum attention written out, differentiated by autodiff (the reference)."""
    b, t, n, h = q.shape
    q = q.reshape(b, t, k.shape[2], n // k.shape[2], h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    if softcap:
        logits = jnp.tanh(logits / softcap) * softcap
    logits = jnp.where(mask[:, None, None], logits, attention.BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)


@pytest.mark.parametrize("softcap", [0.0, 2.0])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_einsum_attention_gradient_equals_autodiff(softcap, kv_heads):
    # The einsum path recomputes its logits backward (a custom VJP); its gradients must be
    # autodiff's, with a soft-cap that saturates, a prefix-LM mask and a fully masked row.
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = 3 * jax.random.normal(keys[0], (2, 6, 4, 8))
    k = jax.random.normal(keys[1], (2, 6, kv_heads, 8))
    v = jax.random.normal(keys[2], (2, 6, kv_heads, 8))
    cot = jax.random.normal(keys[3], (2, 6, 4, 8))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None].repeat(2, 0)
    mask = mask.at[:, :, :3].set(True).at[1, 4].set(False)  # row 4 of example 1 sees nothing

    def loss(attend, *qkv):
        return jnp.sum(attend(*qkv) * cot)

    def custom(q, k, v):
        return attention.attend(q, k, v, mask, softcap=softcap, implementation="einsum")

    def plain(q, k, v):
        return _plain_attention(q, k, v, mask, softcap)

    np.testing.assert_allclose(custom(q, k, v), plain(q, k, v), rtol=1e-6, atol=1e-6)
    want = jax.grad(functools.partial(loss, plain), (0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(functools.partial(loss, custom), (0, 1, 2)))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if softcap:  # the cap must reach the gradient: without it the gradients differ
        uncapped = jax.grad(functools.partial(loss, lambda *a: _plain_attention(*a, mask, 0.0)),
                            (0, 1, 2))(q, k, v)
        assert np.abs(np.asarray(got[0]) - np.asarray(uncapped[0])).max() > 1e-2
    # bfloat16 in: the gradients stay within bfloat16 rounding of float32 autodiff's.
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got16 = jax.jit(jax.grad(functools.partial(loss, custom), (0, 1, 2)))(*low)
    for a, b in zip(got16, want):
        assert a.dtype == jnp.bfloat16
        scale = np.abs(np.asarray(b)).max()
        assert np.abs(a.astype(np.float32) - b).max() < 0.05 * scale
