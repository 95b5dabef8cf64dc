"""The pure train step: freezing, loss, accumulation, fp16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pg_jax import optim
from pg_jax import step as step_lib
from tests import tiny_setup


def _setup(freeze="attn", dtype="float32", frozen_dtype=None, accum=1, lr=1e-2, name="adam"):
    model = tiny_setup.model(dtype)
    params = tiny_setup.params(model)
    opt = optim.make(tiny_setup.opt_config(freeze, lr=lr, optax_name=name), params, 20)
    if frozen_dtype:
        tr = set(opt.trainable)
        flat = {
            k: v if k in tr else v.astype(frozen_dtype) for k, v in optim.flatten(params).items()
        }
        params = optim.unflatten(flat)
    state = {
        "params": params,
        "opt": opt.tx.init(optim.split(params, opt.trainable)[0]),
    }
    fn = jax.jit(step_lib.make_update_fn(model, opt, loss_len=6, grad_accum_steps=accum))
    return model, opt, state, fn


def test_frozen_bitwise_unchanged_trainable_changed():
    _, opt, state, fn = _setup("attn", frozen_dtype=jnp.bfloat16)
    before = jax.tree_util.tree_map(np.asarray, optim.flatten(state["params"]))
    for i in range(3):
        state, m = fn(state, jax.random.PRNGKey(0), tiny_setup.batch(seed=i))
    after = optim.flatten(state["params"])
    for k in opt.frozen:
        assert after[k].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(after[k]), before[k], err_msg=k)
    for k in opt.trainable:
        assert after[k].dtype == jnp.float32
        assert not np.array_equal(np.asarray(after[k]), before[k]), k
    assert int(step_lib.get_step(state["opt"])) == 3
    assert set(m) >= {"training_loss", "l2_grads", "l2_params", "l2_updates", "lr"}


def test_norm_measurements_match_the_returned_state():
    _, opt, state, fn = _setup("attn")
    before = {k: np.asarray(v) for k, v in optim.flatten(state["params"]).items()}
    state, m = fn(state, jax.random.PRNGKey(0), tiny_setup.batch())
    after = optim.flatten(state["params"])
    norm = lambda xs: np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in xs))
    np.testing.assert_allclose(m["l2_params"], norm(after[k] for k in opt.trainable), rtol=1e-5)
    step = [np.asarray(after[k], np.float64) - before[k] for k in opt.trainable]
    np.testing.assert_allclose(m["l2_updates"], norm(step), rtol=1e-4)


def test_loss_falls_on_a_fixed_batch():
    _, _, state, fn = _setup("full", lr=3e-3)
    b = tiny_setup.batch()
    losses = []
    for _ in range(15):
        state, m = fn(state, jax.random.PRNGKey(0), b)
        losses.append(float(m["training_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_only_on_answer_tokens():
    """Changing prompt tokens' targets (not the inputs) or padding must not change the loss."""
    model = tiny_setup.model()
    params = tiny_setup.params(model)
    b = tiny_setup.batch()
    loss, aux = step_lib.loss_fn(params, b, model=model, loss_len=6)
    assert int(aux["tokens"]) == 4 * 4 and int(aux["dropped"]) == 0
    b2 = dict(b, text=b["text"].copy())
    b2["text"][:, 10:] = 77  # padding positions: masked out of input and loss
    np.testing.assert_allclose(
        step_lib.loss_fn(params, b2, model=model, loss_len=6)[0], loss, rtol=1e-6
    )
    _, aux = step_lib.loss_fn(params, b, model=model, loss_len=2)
    assert int(aux["dropped"]) == 4 * 2


def test_accumulated_microbatches_equal_big_batch():
    # SGD: updates are linear in the gradient (Adam's g/sqrt(v) amplifies float noise in ~0 grads).
    _, opt, s1, fn1 = _setup("attn", accum=1, name="sgd", lr=0.5)
    _, _, s4, fn4 = _setup("attn", accum=4, name="sgd", lr=0.5)
    b = tiny_setup.batch(b=8)
    for _ in range(2):
        s1, m1 = fn1(s1, jax.random.PRNGKey(0), b)
        s4, m4 = fn4(s4, jax.random.PRNGKey(0), b)
    np.testing.assert_allclose(m1["training_loss"], m4["training_loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["l2_grads"], m4["l2_grads"], rtol=1e-4)
    for k in opt.trainable:
        np.testing.assert_allclose(
            optim.flatten(s1["params"])[k],
            optim.flatten(s4["params"])[k],
            rtol=1e-5,
            atol=1e-6,
        )


def test_fp16_step_is_finite():
    _, opt, state, fn = _setup("attn", dtype="float16", frozen_dtype=jnp.float16)
    state["loss_scale"] = step_lib.init_loss_scale()
    for i in range(3):
        state, m = fn(state, jax.random.PRNGKey(0), tiny_setup.batch(seed=i))
        assert np.isfinite(float(m["training_loss"]))
    for k in opt.trainable:
        assert np.all(np.isfinite(np.asarray(optim.flatten(state["params"])[k])))
    assert float(m["l2_updates"]) > 0 or int(m["skipped"]) == 1


def test_fp16_overflow_skips_the_update_and_halves_the_scale():
    _, opt, state, fn = _setup("attn", dtype="float16", frozen_dtype=jnp.float16)
    state["loss_scale"] = step_lib.init_loss_scale(initial=1e30)  # overflows in fp16 grads
    before = optim.split(state["params"], opt.trainable)[0]
    before = jax.tree_util.tree_map(np.asarray, before)
    state, m = fn(state, jax.random.PRNGKey(0), tiny_setup.batch())
    assert int(m["skipped"]) == 1
    assert float(state["loss_scale"]["scale"]) == pytest.approx(5e29)
    after = optim.split(state["params"], opt.trainable)[0]
    for k in opt.trainable:
        np.testing.assert_array_equal(np.asarray(after[k]), before[k])


def test_compiler_options_turn_triton_gemms_off_on_gpu_only(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert step_lib.compiler_options() == {}
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert step_lib.compiler_options() == {}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert step_lib.compiler_options() == {"xla_gpu_enable_triton_gemm": False}
    # A user's own setting of the option wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
    assert step_lib.compiler_options() == {}
