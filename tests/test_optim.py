"""optim.make: trainable sets, no state for frozen leaves, schedules, config errors."""

import itertools

import jax
import numpy as np
import pytest

from pg_jax import optim
from tests import tiny_setup


@pytest.fixture(scope="module")
def shapes():
    return jax.eval_shape(lambda: tiny_setup.params(tiny_setup.model()))


@pytest.fixture(scope="module")
def lora_shapes():
    model = tiny_setup.model().clone(lora={"rank": 2})
    return jax.eval_shape(lambda: tiny_setup.params(model))


@pytest.mark.parametrize("freeze", sorted(optim.PRESETS))
def test_presets_partition_every_param(shapes, lora_shapes, freeze):
    shapes = lora_shapes if freeze == "lora" else shapes
    opt = optim.make(tiny_setup.opt_config(freeze), shapes, 10)
    names = set(optim.flatten(shapes))
    assert set(opt.trainable) | set(opt.frozen) == names
    assert not set(opt.trainable) & set(opt.frozen)
    if freeze == "attn":
        assert all(k.startswith("llm/layers/attn/") for k in opt.trainable)
        assert "llm/layers/attn/q_einsum/w" in opt.trainable
    if freeze == "full":
        assert not opt.frozen
    if freeze == "lora":
        assert opt.trainable and all(k.endswith(("_lora_a", "_lora_b")) for k in opt.trainable)


def test_lora_preset_on_a_model_without_factors_says_so(shapes):
    with pytest.raises(ValueError, match="this model has none: set config.lora"):
        optim.make(tiny_setup.opt_config("lora"), shapes, 10)


def test_no_optimizer_state_for_frozen(shapes):
    opt = optim.make(tiny_setup.opt_config("attn"), shapes, 10)
    tr, _ = optim.split(shapes, opt.trainable)
    state = jax.eval_shape(opt.tx.init, tr)
    state_bytes = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state))
    tr_size = sum(np.prod(x.shape) for x in tr.values())
    assert state_bytes <= 2 * tr_size + 16  # Adam: mu + nu of trainable leaves, plus counters
    names = {
        str(getattr(p[-1], "key", "")) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
    }
    assert not names & set(opt.frozen)


def test_unmatched_param_is_an_error(shapes):
    cfg = tiny_setup.opt_config()
    cfg.schedule = [("llm/.*", {"decay_type": "cosine"})]
    with pytest.raises(ValueError, match="no rule matches.*img/"):
        optim.make(cfg, shapes, 10)


def test_everything_frozen_is_an_error(shapes):
    cfg = tiny_setup.opt_config()
    cfg.schedule = [(".*", None)]
    with pytest.raises(ValueError, match="nothing would train"):
        optim.make(cfg, shapes, 10)


def test_unknown_optimizer(shapes):
    cfg = tiny_setup.opt_config(optax_name="lion")
    with pytest.raises(ValueError, match="optax_name"):
        optim.make(cfg, shapes, 10)


def test_schedule_warmup_then_cosine():
    fn = optim.make_schedule(10, warmup_steps=2, decay_type="cosine")
    values = [float(fn(s)) for s in range(10)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(a >= b for a, b in itertools.pairwise(values[1:]))
    with pytest.raises(ValueError, match="warmup"):
        optim.make_schedule(10, warmup_steps=10)


def test_decoupled_weight_decay_not_times_lr(shapes):
    """With zero gradients, Adam's update is 0 and only -sched * wd * p remains (no lr)."""
    import jax.numpy as jnp

    cfg = tiny_setup.opt_config("attn", lr=1e-3, wd=0.1, clip=0.0)
    cfg.schedule = [(r, {"decay_type": "constant"} if s else None) for r, s in cfg.schedule]
    opt = optim.make(cfg, shapes, 10)
    p = {
        k: jnp.ones(shapes_flat.shape)
        for k, shapes_flat in optim.split(shapes, opt.trainable)[0].items()
    }
    g = jax.tree_util.tree_map(jnp.zeros_like, p)
    upd, _ = opt.tx.update(g, opt.tx.init(p), p)
    np.testing.assert_allclose(upd["llm/layers/attn/q_einsum/w"], -0.1, rtol=1e-6)
